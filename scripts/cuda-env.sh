# Sourced by the scripts that build with `--features cuda`: points candle's build (nvcc) and
# our tests (libnvrtc) at the PyPI toolkit that scripts/cuda-toolkit installs.
# CUDA_COMPUTE_CAP is the GPU generation candle's PTX is built for: 90 = Hopper (H100/H200);
# our own kernels are compiled at run time for whatever GPU runs them.
CUDA_TOOLKIT=$(scripts/cuda-toolkit)
export NVCC="$CUDA_TOOLKIT/bin/nvcc"
export CUDA_HOME="$CUDA_TOOLKIT"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LD_LIBRARY_PATH="$CUDA_TOOLKIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
