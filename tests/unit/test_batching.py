"""WindowBatcher and eval_batches on a small corpus written by `prepare`.

Reference values come from the prepared stream itself (`corpus.word` / `token_char_ids` of
the tokens at the stream positions a window covers), so every check is on real spellings.
"""
import json
import random

import numpy as np
import pytest

from elmo_dist.data.batching import IGNORE, WindowBatcher, eval_batches, trim_chars
from elmo_dist.data.char_ids import PAD_CHAR, char_id_table, token_char_ids
from elmo_dist.data.corpus import PreparedCorpus
from elmo_dist.data.prepare import PrepareOptions, prepare
from elmo_dist.data.vocab import BOS_ID, EOS_ID, UNK_ID

ROWS, STEPS = 4, 8
BOS_CHARS = token_char_ids("<S>").tolist()
EOS_CHARS = token_char_ids("</S>").tolist()
UNK_CHARS = token_char_ids("<UNK>").tolist()


def _corpus_lines(n_lines=220, seed=7):
    rng = random.Random(seed)
    base = ["the", "of", "and", "a", "to", "in", "is", "café", "日本", "über", "dog", "cat"]
    base += [f"w{k}" for k in range(60)]
    weights = [1 / (k + 1) for k in range(len(base))]
    lines = []
    for i in range(n_lines):
        words = []
        for _ in range(rng.randint(2, 12)):
            words.append(f"rare{i}x{len(words)}" if rng.random() < 0.04 else rng.choices(base, weights)[0])
        lines.append(" ".join(words))
    return lines


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = _corpus_lines()
    src = root / "input.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = prepare(PrepareOptions(inputs=[str(src)], out=str(root / "prep"), min_count=2,
                                      heldout_fraction=0.1, shard_tokens=450, seed=0))
    return root / "prep", lines, manifest


@pytest.fixture(scope="module")
def corpus(prepared):
    return PreparedCorpus(prepared[0])


@pytest.fixture(scope="module")
def manifest(prepared):
    return prepared[2]


# -- helpers -------------------------------------------------------------------------------------

def stream_words(corpus, stream):
    return [corpus.word(int(g)) for g in stream.read(0, len(stream))]


def full_chars(batch):
    """The batch's (trimmed) char table padded back to the full 50 columns."""
    chars = batch["chars"]
    pad = np.full((len(chars), 50 - chars.shape[1]), PAD_CHAR, dtype=chars.dtype)
    return np.concatenate([chars, pad], axis=1)


def decoded(batch, key):
    """The char ids each position of a window feeds the char CNN: [rows, steps, 50]."""
    return full_chars(batch)[batch[key]]


def steps_per_epoch(corpus, seed, rows=ROWS, steps=STEPS, epoch=0):
    probe = WindowBatcher(corpus, rows, steps, seed=seed)
    probe.load_state_dict({"epoch": epoch, "step": 0})
    probe.next_batch()
    return probe.steps_per_epoch


def take(batcher, n):
    return [batcher.next_batch() for _ in range(n)]


def same_batch(a, b):
    """Two batches feed the model identical inputs and targets (index tables may be renumbered)."""
    return (np.array_equal(decoded(a, "fwd_index"), decoded(b, "fwd_index"))
            and np.array_equal(decoded(a, "bwd_index"), decoded(b, "bwd_index"))
            and np.array_equal(a["token_ids"][a["fwd_index"]], b["token_ids"][b["fwd_index"]])
            and np.array_equal(a["fwd_targets"], b["fwd_targets"])
            and np.array_equal(a["bwd_targets"], b["bwd_targets"])
            and a["reset"] == b["reset"])


# -- the prepared corpus -------------------------------------------------------------------------

def test_prepared_streams_spell_the_source_text(corpus, prepared, manifest):
    _, lines, _ = prepared
    assert len(corpus.shards["train"]) >= 3  # several shards, so the epoch permutation matters

    def sentences(split):
        words = stream_words(corpus, corpus.stream(split))
        out, cur = [], None
        for w in words:
            if w == "<S>":
                assert cur is None
                cur = []
            elif w == "</S>":
                out.append(" ".join(cur))
                cur = None
            else:
                cur.append(w)
        assert cur is None
        return out

    train, held = sentences("train"), sentences("heldout")
    assert len(train) == manifest["splits"]["train"]["sentences"]
    assert len(held) == manifest["splits"]["heldout"]["sentences"] > 0
    # every input line is the next train or the next held-out sentence, in order
    i = j = 0
    for line in lines:
        if i < len(train) and train[i] == line:
            i += 1
        else:
            assert held[j] == line
            j += 1
    assert (i, j) == (len(train), len(held))


def test_corpus_has_oov_words_in_both_splits(corpus, manifest):
    v = len(corpus.vocab)
    for split in ("train", "heldout"):
        gids = corpus.stream(split).read(0, len(corpus.stream(split)))
        oov = gids[gids >= v]
        assert len(oov) == manifest["splits"][split]["oov_words"] > 0
        words = {corpus.word(int(g)) for g in oov}
        assert not words & set(corpus.vocab.tokens)
    assert any(w.startswith("rare") for w in words)


# -- shapes and targets --------------------------------------------------------------------------

def test_batch_shapes_and_every_row_full(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=1)
    for batch in take(b, 30):
        for key in ("fwd_index", "bwd_index", "fwd_targets", "bwd_targets"):
            assert batch[key].shape == (ROWS, STEPS)
        assert batch["chars"].shape[0] == len(batch["token_ids"])
        assert batch["chars"].dtype == np.int16
        # distinct tokens only
        assert len(np.unique(batch["chars"], axis=0)) == len(batch["chars"])
        # trimmed to the longest token (BOW + bytes + EOW) plus one padding column
        longest = (batch["chars"] != PAD_CHAR).sum(1).max()
        assert batch["chars"].shape[1] == min(50, longest + 1)
        assert (batch["chars"][:, -1] == PAD_CHAR).all() or batch["chars"].shape[1] == 50
        # no padding anywhere in a training window: every input is a real token
        assert batch["fwd_index"].max() < len(batch["chars"])
        fwd_chars = decoded(batch, "fwd_index")
        assert (fwd_chars[:, :, 0] == 258).all()
        # a row is only without targets if it is all </S>, which never happens
        assert ((batch["fwd_targets"] != IGNORE).sum(1) > 0).all()
        assert ((batch["bwd_targets"] != IGNORE).sum(1) > 0).all()


def test_trim_chars_keeps_one_padding_column():
    table = char_id_table(["<S>", "ab", "abcd"])
    trimmed = trim_chars(table)
    assert trimmed.shape == (3, 7)  # 'abcd' is 6 ids (258 a b c d 259), plus one padding column
    assert trimmed.tolist() == table[:, :7].tolist()
    assert trimmed.flags["C_CONTIGUOUS"]
    assert trim_chars(char_id_table(["<S>", "</S>"])).shape == (2, 4)
    # a token of 48 bytes or more keeps all 50 columns (no padding column exists)
    assert trim_chars(char_id_table(["a", "x" * 48])).shape == (2, 50)
    assert trim_chars(char_id_table(["a", "x" * 47])).shape == (2, 50)
    assert trim_chars(char_id_table(["a", "x" * 46])).shape == (2, 49)


def test_windows_read_the_stream_with_next_and_previous_token_targets(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=3)
    v = len(corpus.vocab)
    checked = 0
    for _ in range(25):
        batch = b.next_batch()
        words = stream_words(corpus, b.stream)
        gids = b.stream.read(0, len(b.stream))
        lo, spe = b.lane_starts, b.steps_per_epoch
        step = b.step - 1
        fwd_chars, bwd_chars = decoded(batch, "fwd_index"), decoded(batch, "bwd_index")
        for r in range(ROWS):
            f0 = int(lo[r]) + step * STEPS
            b0 = int(lo[r]) + spe * STEPS - (step + 1) * STEPS
            for j in range(STEPS):
                p, q = f0 + j, b0 + j
                assert fwd_chars[r, j].tolist() == token_char_ids(words[p]).tolist()
                assert bwd_chars[r, j].tolist() == token_char_ids(words[q]).tolist()
                assert batch["token_ids"][batch["fwd_index"][r, j]] == (gids[p] if gids[p] < v else UNK_ID)
                want_f = IGNORE if words[p] == "</S>" else corpus.vocab.id(words[p + 1])
                want_b = IGNORE if words[q] == "<S>" else corpus.vocab.id(words[q - 1])
                assert batch["fwd_targets"][r, j] == want_f
                assert batch["bwd_targets"][r, j] == want_b
                checked += 1
    assert checked == 25 * ROWS * STEPS


def test_targets_consistent_with_inputs_across_windows(corpus):
    """Black-box: a target is the neighbouring input, in this window or the row's next one."""
    b = WindowBatcher(corpus, ROWS, STEPS, seed=5)
    batches = [b.next_batch()]
    spe = b.steps_per_epoch
    batches += take(b, spe - 1)
    assert len(batches) == spe and b.epoch == 0
    for t, batch in enumerate(batches):
        ids_f = batch["token_ids"][batch["fwd_index"]]
        ids_b = batch["token_ids"][batch["bwd_index"]]
        f_eos = (decoded(batch, "fwd_index") == np.array(EOS_CHARS)).all(-1)
        b_bos = (decoded(batch, "bwd_index") == np.array(BOS_CHARS)).all(-1)
        ft, bt = batch["fwd_targets"], batch["bwd_targets"]
        assert np.array_equal(ft == IGNORE, f_eos)
        assert np.array_equal(bt == IGNORE, b_bos)
        assert np.array_equal(ft[:, :-1][~f_eos[:, :-1]], ids_f[:, 1:][~f_eos[:, :-1]])
        assert np.array_equal(bt[:, 1:][~b_bos[:, 1:]], ids_b[:, :-1][~b_bos[:, 1:]])
        if t + 1 < spe:
            nxt = batches[t + 1]
            first_f = nxt["token_ids"][nxt["fwd_index"][:, 0]]
            last_b = nxt["token_ids"][nxt["bwd_index"][:, -1]]
            assert np.array_equal(ft[:, -1][~f_eos[:, -1]], first_f[~f_eos[:, -1]])
            assert np.array_equal(bt[:, 0][~b_bos[:, 0]], last_b[~b_bos[:, 0]])
    assert [bt["reset"] for bt in batches] == [True] + [False] * (spe - 1)


def test_ignore_exactly_at_sentence_boundaries(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=11, stateful=False)
    n_eos = n_bos = 0
    for batch in take(b, 40):
        chars = decoded(batch, "fwd_index")
        is_eos = (chars == np.array(EOS_CHARS)).all(-1)
        is_bos = (chars == np.array(BOS_CHARS)).all(-1)
        assert np.array_equal(batch["fwd_targets"] == IGNORE, is_eos)
        assert np.array_equal(batch["bwd_targets"] == IGNORE, is_bos)
        # the forward target of <S> and the backward target of </S> are real words, never boundaries
        assert not np.isin(batch["fwd_targets"][is_bos], [BOS_ID, EOS_ID, IGNORE]).any()
        assert not np.isin(batch["bwd_targets"][is_eos], [BOS_ID, EOS_ID, IGNORE]).any()
        # </S> is a forward target only after a word, <S> a backward one only before a word
        assert (batch["fwd_targets"] != BOS_ID).all()
        assert (batch["bwd_targets"] != EOS_ID).all()
        n_eos += is_eos.sum()
        n_bos += is_bos.sum()
    assert n_eos > 10 and n_bos > 10


def test_oov_words_have_unk_targets_but_real_characters(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=2, stateful=False)  # one window for both directions
    v = len(corpus.vocab)
    seen = 0
    for _ in range(40):
        batch = b.next_batch()
        gids = b.stream.read(0, len(b.stream))
        step = b.step - 1
        chars = decoded(batch, "fwd_index")
        for r in range(ROWS):
            p0 = int(b.lane_starts[r]) + step * STEPS
            for j in range(STEPS):
                g = int(gids[p0 + j])
                if g < v:
                    continue
                word = corpus.word(g)
                assert corpus.vocab.id(word) == UNK_ID
                assert chars[r, j].tolist() == token_char_ids(word).tolist()
                assert chars[r, j].tolist() != UNK_CHARS
                assert batch["token_ids"][batch["fwd_index"][r, j]] == UNK_ID
                if j > 0:  # predicted from the previous position of the same window
                    assert batch["fwd_targets"][r, j - 1] == UNK_ID
                if j + 1 < STEPS:
                    assert batch["bwd_targets"][r, j + 1] == UNK_ID
                seen += 1
        # <UNK>'s own spelling never reaches the char CNN: no OOV word is stored as "<UNK>"
        assert not (full_chars(batch) == np.array(UNK_CHARS)).all(-1).any()
    assert seen >= 5


# -- determinism and resuming --------------------------------------------------------------------

def test_same_seed_same_batches_different_seed_different(corpus):
    a = WindowBatcher(corpus, ROWS, STEPS, seed=42)
    b = WindowBatcher(corpus, ROWS, STEPS, seed=42)
    c = WindowBatcher(corpus, ROWS, STEPS, seed=43)
    n = 2 * steps_per_epoch(corpus, 42) + 3  # two epoch changes
    first = take(a, n)
    assert a.epoch == 2
    assert all(same_batch(x, y) for x, y in zip(first, take(b, n)))
    others = take(c, n)
    assert sum(not same_batch(x, y) for x, y in zip(first, others)) > n // 2


def test_epochs_move_window_edges_and_shard_order(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=9)
    offsets, orders = set(), set()
    for _ in range(8):
        b.next_batch()
        assert 0 <= b.lane_starts[0] < STEPS  # a seeded offset below unroll_steps
        offsets.add(int(b.lane_starts[0]))
        orders.add(tuple(s.oov_base for s in b.stream.shards))
        b.load_state_dict({"epoch": b.epoch + 1, "step": 0})
    assert len(offsets) >= 3
    assert len(orders) >= 3


@pytest.mark.parametrize("k", [0, 1, 5, "end-2", "end", "end+3"])
def test_resume_from_state_dict(corpus, k):
    spe = steps_per_epoch(corpus, 7)
    k = {"end-2": spe - 2, "end": spe, "end+3": spe + 3}.get(k, k)
    ref = WindowBatcher(corpus, ROWS, STEPS, seed=7)
    take(ref, k)
    state = json.loads(json.dumps(ref.state_dict()))  # survives a checkpoint as plain data
    resumed = WindowBatcher(corpus, ROWS, STEPS, seed=7)
    resumed.load_state_dict(state)
    epochs, resets = [], []
    for _ in range(6):
        x, y = ref.next_batch(), resumed.next_batch()
        assert same_batch(x, y)
        assert resumed.state_dict() == ref.state_dict()
        epochs.append(resumed.epoch)
        resets.append(y["reset"])
    if k == spe - 2:
        assert epochs == [0, 0, 1, 1, 1, 1]  # the resumed run crossed the epoch boundary
        assert resets == [False, False, True, False, False, False]
    if k == spe:
        assert epochs == [1] * 6


def test_resume_into_a_used_batcher(corpus):
    """load_state_dict on a batcher that is already elsewhere (another epoch) jumps there exactly."""
    spe = steps_per_epoch(corpus, 7)
    ref = WindowBatcher(corpus, ROWS, STEPS, seed=7)
    take(ref, spe + 4)
    state = ref.state_dict()
    other = WindowBatcher(corpus, ROWS, STEPS, seed=7)
    take(other, 3)  # epoch 0 layout cached
    other.load_state_dict(state)
    assert all(same_batch(x, y) for x, y in zip(take(ref, 4), take(other, 4)))


def test_state_dict_contents(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=7, world_size=1)
    take(b, 3)
    s = b.state_dict()
    assert (s["epoch"], s["step"], s["seed"], s["rows"], s["unroll_steps"],
            s["world_size"]) == (0, 3, 7, ROWS, STEPS, 1)


# -- ranks ---------------------------------------------------------------------------------------

def test_two_ranks_split_the_single_process_batch(corpus):
    r0 = WindowBatcher(corpus, ROWS, STEPS, seed=4, rank=0, world_size=2)
    r1 = WindowBatcher(corpus, ROWS, STEPS, seed=4, rank=1, world_size=2)
    one = WindowBatcher(corpus, 2 * ROWS, STEPS, seed=4)
    positions = {0: set(), 1: set()}
    whole = set()
    n = 0
    while True:
        a, b, c = r0.next_batch(), r1.next_batch(), one.next_batch()
        if r0.epoch > 0:
            break
        assert r0.steps_per_epoch == r1.steps_per_epoch == one.steps_per_epoch
        for key in ("fwd_index", "bwd_index"):
            both = np.concatenate([decoded(a, key), decoded(b, key)])
            assert np.array_equal(both, decoded(c, key))
        for key in ("fwd_targets", "bwd_targets"):
            assert np.array_equal(np.concatenate([a[key], b[key]]), c[key])
        step = r0.step - 1
        for rank, bt in ((0, r0), (1, r1)):
            for start in bt.lane_starts + step * STEPS:
                positions[rank].update(range(int(start), int(start) + STEPS))
        for start in one.lane_starts + step * STEPS:
            whole.update(range(int(start), int(start) + STEPS))
        stream_len = len(one.stream)
        n += 1
    assert n == one.steps_per_epoch > 10
    assert not positions[0] & positions[1]
    assert positions[0] | positions[1] == whole
    assert len(whole) == 2 * ROWS * n * STEPS  # lanes don't overlap
    # an epoch reads almost all of the stream: less than one window per lane is left out
    assert stream_len - len(whole) < 2 * ROWS * STEPS + STEPS


def test_ranks_are_not_copies_of_each_other(corpus):
    a = WindowBatcher(corpus, ROWS, STEPS, seed=4, rank=0, world_size=2).next_batch()
    b = WindowBatcher(corpus, ROWS, STEPS, seed=4, rank=1, world_size=2).next_batch()
    assert not np.array_equal(decoded(a, "fwd_index"), decoded(b, "fwd_index"))


# -- stateful backward windows -------------------------------------------------------------------

def test_stateful_backward_windows_walk_each_lane_from_the_end(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=8, stateful=True)
    first = b.next_batch()
    spe = b.steps_per_epoch
    batches = [first] + take(b, spe - 1)
    assert b.epoch == 0
    for t in range(spe):
        back = decoded(batches[t], "bwd_index")
        fwd = decoded(batches[spe - 1 - t], "fwd_index")
        assert np.array_equal(back, fwd)
    # and the forward and backward windows of a step differ (except by chance in the middle)
    assert not np.array_equal(decoded(batches[0], "bwd_index"), decoded(batches[0], "fwd_index"))
    # reading the backward windows in order, right to left, spells each lane reversed
    lane_fwd = np.concatenate([decoded(x, "fwd_index") for x in batches], axis=1)
    lane_bwd_reversed = np.concatenate([decoded(x, "bwd_index")[:, ::-1] for x in batches], axis=1)
    assert np.array_equal(lane_bwd_reversed, lane_fwd[:, ::-1])


def test_stateless_backward_shares_the_forward_window(corpus):
    b = WindowBatcher(corpus, ROWS, STEPS, seed=8, stateful=False)
    for batch in take(b, 5):
        assert np.array_equal(batch["bwd_index"], batch["fwd_index"])
        assert len(batch["token_ids"]) == len(np.unique(batch["fwd_index"]))


def test_too_small_corpus_is_refused(corpus):
    n = len(corpus.stream("train"))
    with pytest.raises(ValueError, match="too small"):
        WindowBatcher(corpus, n // 8, 8, seed=0)


# -- evaluation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, steps", [(3, 5), (1, 7), (4, 16), (2, 200)])
def test_eval_predicts_every_heldout_token_once_per_direction(corpus, manifest, rows, steps):
    held = manifest["splits"]["heldout"]
    expect = held["words"] + held["sentences"]
    stream = corpus.stream("heldout")
    gids = stream.read(0, len(stream))
    ids = corpus.softmax_ids(gids)
    f_targets, b_targets = [], []
    batches = list(eval_batches(corpus, rows, steps))
    assert [b["reset"] for b in batches] == [True] + [False] * (len(batches) - 1)
    for batch in batches:
        assert batch["fwd_targets"].shape == batch["bwd_targets"].shape == (rows, steps)
        f, bw = batch["fwd_targets"], batch["bwd_targets"]
        f_targets += f[f != IGNORE].tolist()
        b_targets += bw[bw != IGNORE].tolist()
    assert len(f_targets) == len(b_targets) == expect
    # every token except each <S> is predicted forward, every token except each </S> backward
    assert sorted(f_targets) == sorted(ids[gids != BOS_ID].tolist())
    assert sorted(b_targets) == sorted(ids[gids != EOS_ID].tolist())


@pytest.mark.parametrize("rows, steps", [(3, 5), (4, 16)])
def test_eval_padding_is_read_last_in_each_direction(corpus, rows, steps):
    """Lanes are equal, contiguous pieces of the split, padded to whole windows: forward windows
    start at the lane's start (padding on the right), backward windows end at the lane's end
    (padding on the left), so neither LSTM reads padding before a real token."""
    stream = corpus.stream("heldout")
    n = len(stream)
    words = [token_char_ids(corpus.word(int(g))).tolist() for g in stream.read(0, n)]
    lane_len = -(-n // rows)
    batches = list(eval_batches(corpus, rows, steps))
    assert len(batches) * steps >= lane_len > (len(batches) - 1) * steps
    assert len(batches) * steps > lane_len  # these sizes do leave padding
    for r in range(rows):
        lo, hi = min(r * lane_len, n), min((r + 1) * lane_len, n)
        lane = words[lo:hi]
        fwd = np.concatenate([decoded(b, "fwd_index")[r] for b in batches]).tolist()
        bwd = np.concatenate([decoded(b, "bwd_index")[r] for b in reversed(batches)]).tolist()
        assert fwd[: hi - lo] == lane
        assert bwd[len(bwd) - (hi - lo):] == lane
        # no target is taken from a padding position
        f_t = np.concatenate([b["fwd_targets"][r] for b in batches])
        b_t = np.concatenate([b["bwd_targets"][r] for b in reversed(batches)])
        assert (f_t[hi - lo:] == IGNORE).all()
        assert (b_t[: len(b_t) - (hi - lo)] == IGNORE).all()


def test_eval_across_two_ranks_covers_the_split_once(corpus, manifest):
    held = manifest["splits"]["heldout"]
    total = 0
    for rank in (0, 1):
        for batch in eval_batches(corpus, 2, 6, rank=rank, world_size=2):
            total += int((batch["fwd_targets"] != IGNORE).sum())
    assert total == held["words"] + held["sentences"]


@pytest.mark.parametrize("max_tokens", [40, 100])
def test_eval_max_tokens_stops_at_the_last_whole_sentence(corpus, max_tokens):
    stream = corpus.stream("heldout")
    head = stream.read(0, max_tokens)
    n = int(np.flatnonzero(head == EOS_ID)[-1]) + 1
    assert n < max_tokens or head[-1] == EOS_ID
    n_sentences = int((head[:n] == BOS_ID).sum())
    assert n_sentences >= 1
    batches = list(eval_batches(corpus, 2, 5, max_tokens=max_tokens))
    f = sum(int((b["fwd_targets"] != IGNORE).sum()) for b in batches)
    bw = sum(int((b["bwd_targets"] != IGNORE).sum()) for b in batches)
    assert f == bw == n - n_sentences  # words + sentences of the whole sentences kept
    assert len(batches) == -(-(-(-n // 2)) // 5)  # noqa: B002 (two ceiling divisions, not a decrement)


def test_eval_max_tokens_beyond_the_split_is_everything(corpus, manifest):
    held = manifest["splits"]["heldout"]
    batches = eval_batches(corpus, 2, 5, max_tokens=10 ** 9)
    assert sum(int((b["fwd_targets"] != IGNORE).sum()) for b in batches) == held["words"] + held["sentences"]


def test_eval_max_tokens_without_a_whole_sentence(corpus):
    first_len = int(np.flatnonzero(corpus.stream("heldout").read(0, 50) == EOS_ID)[0]) + 1
    with pytest.raises(ValueError, match="no complete held-out sentence"):
        list(eval_batches(corpus, 2, 5, max_tokens=first_len - 1))


@pytest.mark.parametrize("rows, steps, context", [(3, 5, 12), (4, 16, 200)], ids=["3-windows", "one-lane"])
def test_eval_context_warms_each_lane_on_its_neighbours_text(corpus, manifest, rows, steps, context):
    """Issue 15, case 6: every lane used to start from a zero state, so more lanes gave a higher
    perplexity. Now a lane first reads, unscored, the text before it (forward) and after it
    (backward); a lane with no such text is flagged `fresh` so its state restarts at zero."""
    stream = corpus.stream("heldout")
    n = len(stream)
    words = [token_char_ids(corpus.word(int(g))).tolist() for g in stream.read(0, n)]
    lane_len = -(-n // rows)
    warm = min(-(-context // steps), lane_len // steps)  # whole windows, at most one lane
    assert warm >= 2
    plain = list(eval_batches(corpus, rows, steps))
    batches = list(eval_batches(corpus, rows, steps, context_tokens=context))
    assert len(batches) == len(plain) + warm
    for b in batches[:warm]:  # nothing is scored while warming
        assert (b["fwd_targets"] == IGNORE).all() and (b["bwd_targets"] == IGNORE).all()
    for b, p in zip(batches[warm:], plain):  # then the same scored windows as without a context
        assert all(np.array_equal(b[k], p[k]) for k in ("fwd_targets", "bwd_targets", "token_ids"))
    assert [b["reset"] for b in batches] == [True] + [False] * (len(batches) - 1)
    fresh_fwd, fresh_bwd = batches[warm]["fresh"]
    assert fresh_fwd.tolist() == [r == 0 for r in range(rows)]
    assert fresh_bwd.tolist() == [min((r + 1) * lane_len, n) + warm * steps > n for r in range(rows)]
    for r in range(1, rows):
        lo = r * lane_len
        fwd = np.concatenate([decoded(b, "fwd_index")[r] for b in batches[:warm]]).tolist()
        assert fwd == words[lo - warm * steps: lo]  # the previous lane's last tokens, in order
    for r in range(rows - 1):
        hi = (r + 1) * lane_len
        bwd = np.concatenate([decoded(b, "bwd_index")[r] for b in reversed(batches[:warm])]).tolist()
        assert bwd == words[hi: hi + warm * steps]  # the next lane's first tokens
