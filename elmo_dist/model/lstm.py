"""ELMo's LSTM: cells with a projection, optional cell/projection clipping, residual stacks.

`ProjectedLstm` keeps its weights in an `nn.LSTM(proj_size=...)` and runs that fast path (cuDNN
on CUDA) when no clipping is asked for. With `cell_clip` or `proj_clip` set it runs the exact
clipped cell of bilm-tf, step by step, on the *same* parameters, so the two paths are
interchangeable and can be checked against each other.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

# the CPU falls back from oneDNN to PyTorch's own kernel for projected LSTMs; that is expected
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")

State = tuple[torch.Tensor, torch.Tensor]  # (h [1, B, proj], c [1, B, cells])


class ProjectedLstm(nn.Module):
    def __init__(self, input_dim: int, cells: int, proj: int, cell_clip: float | None, proj_clip: float | None):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, cells, batch_first=True, proj_size=proj)
        self.cell_clip, self.proj_clip = cell_clip, proj_clip

    @property
    def clipped(self) -> bool:
        return self.cell_clip is not None or self.proj_clip is not None

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if not self.clipped:
            return self.lstm(x, state)
        return self._clipped_forward(x, state)

    def _clipped_forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        lstm = self.lstm
        b, cells, proj = x.shape[0], lstm.hidden_size, lstm.proj_size
        if state is None:
            h = x.new_zeros(b, proj)
            c = x.new_zeros(b, cells)
        else:
            h, c = state[0][0], state[1][0]
        # the input half of the gates for every step in one matrix multiply
        gates_x = torch.nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
        outputs = []
        for t in range(x.shape[1]):
            gates = gates_x[:, t] + h @ lstm.weight_hh_l0.t()
            i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.cell_clip is not None:
                c = c.clamp(-self.cell_clip, self.cell_clip)
            h = (torch.sigmoid(o) * torch.tanh(c)) @ lstm.weight_hr_l0.t()
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h.unsqueeze(0), c.unsqueeze(0))


class LstmStack(nn.Module):
    """One direction: n projected LSTM layers, dropout on each layer's input, residual after layer 1."""

    def __init__(self, dim: int, cells: int, n_layers: int, cell_clip, proj_clip, residual: bool, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(ProjectedLstm(dim, cells, dim, cell_clip, proj_clip) for _ in range(n_layers))
        self.residual = residual
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: list[State] | None = None) -> tuple[list[torch.Tensor], list[State]]:
        """Outputs of every layer [B, T, dim], and the final state of every layer."""
        outputs, new_state = [], []
        for i, layer in enumerate(self.layers):
            h, s = layer(self.dropout(x), None if state is None else state[i])
            if self.residual and i > 0:
                h = h + x
            outputs.append(h)
            new_state.append(s)
            x = h
        return outputs, new_state
