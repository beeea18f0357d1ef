"""Training: the train state, the pure step, the loop, checkpoints, the device mesh."""
from ictl.train.loop import Diverged, fit, read_history
from ictl.train.mesh import make_mesh, maybe_initialize_distributed, shard_batch
from ictl.train.optim import config_optimizer, warmup_cosine_schedule
from ictl.train.seeds import seed_keys, unstack, vmap_seeds
from ictl.train.state import TrainState, make_train_step

__all__ = ["TrainState", "make_train_step", "fit", "Diverged", "read_history", "make_mesh",
           "shard_batch", "maybe_initialize_distributed", "config_optimizer", "warmup_cosine_schedule",
           "seed_keys", "vmap_seeds", "unstack"]
