"""What every command that trains shares, below pretraining and fine-tuning: the Accelerator and
DeepSpeed config (`accel`, `deepspeed_config`), logging (`logs`) and metrics (`metrics`), the
run-directory lock (`lock`), learning-rate schedules (`schedule`), stop signals (`stop`) and the
checkpointer (`checkpoint`)."""
