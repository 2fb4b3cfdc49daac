"""The GPU tests' one-config fixture picks the config with the smallest tiles (runs on a CPU, no Triton needed)."""

from types import SimpleNamespace

from conftest import smallest_config


def cfg(num_stages, **blocks):
    return SimpleNamespace(kwargs=blocks, num_stages=num_stages)


def test_smallest_config_of_mamba_ssm_chunk_state_configs():
    # mamba-ssm 2.3.2's _chunk_state_fwd_kernel configs, in its order: the first (128 x 256 x 64, 3 stages) needs
    # 295,936 bytes of shared memory in float32 on sm_90 (limit 232,448), the smallest 54,272
    # (notes/ssd_shared_memory_sm90.txt)
    configs = [cfg(3, BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64),
               cfg(4, BLOCK_SIZE_M=64, BLOCK_SIZE_N=256, BLOCK_SIZE_K=32),
               cfg(4, BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=32),
               cfg(4, BLOCK_SIZE_M=128, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32),
               cfg(4, BLOCK_SIZE_M=64, BLOCK_SIZE_N=128, BLOCK_SIZE_K=32),
               cfg(4, BLOCK_SIZE_M=128, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32),
               cfg(5, BLOCK_SIZE_M=64, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32),
               cfg(5, BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32),
               cfg(4, BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=32)]
    assert smallest_config(configs) is configs[6]  # 5 x 64·32·32 is the least; first of the two equals


def test_smallest_config_counts_only_block_sizes_and_stages():
    configs = [cfg(None, BLOCK_SIZE_H=16, other=1), cfg(None, BLOCK_SIZE_H=2, other=99), cfg(1, BLOCK_SIZE_H=4)]
    assert smallest_config(configs) is configs[1]
