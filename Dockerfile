# stmap GPU image: CUDA runtime, stmap with the gpu (onnxruntime-gpu) and tensorrt extras.
#   docker build -t stmap .
#   docker run --gpus all -v "$PWD:/data" stmap infer /data/city.tif -o /data/out
# Multi-stage: the build stage has pip and the build backend; the runtime stage only
# the virtual environment, Python and the CUDA runtime libraries.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.* python3.12-venv=3.12.* \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/stmap
ENV PATH=/opt/stmap/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
COPY train ./train
COPY export ./export
COPY runtime ./runtime
RUN pip install --no-compile -c constraints.txt ".[gpu,tensorrt]"

FROM ${CUDA_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 stmap
COPY --from=build /opt/stmap /opt/stmap
# The allocator settings of stmap.memory: flat memory over many scenes
# (benchmarks/results/cpu_soak.md), large CPU model buffers reused between forwards.
ENV PATH=/opt/stmap/bin:$PATH PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728
USER 10001
WORKDIR /data
HEALTHCHECK --interval=5m --timeout=60s CMD ["stmap", "info", "--system"]
ENTRYPOINT ["stmap"]
CMD ["--help"]
