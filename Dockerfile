# The sampling server with the shipped checkpoints: `docker compose up` on a GPU host, or
#   docker build -t ddpm-ddim . && docker run --gpus all -p 8000:8000 ddpm-ddim
# Without a GPU (or without --gpus) the same image serves from the CPU: DDPM_DEVICE=auto.
# Another base: --build-arg BASE_IMAGE=pytorch/pytorch:<tag> (Python 3.11 or newer: tomllib below).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, in their own layer: editing the code does not download them again.
# torch and torchvision come with the base image (with CUDA) and satisfy the requirements as they are.
# EXTRAS: optional dependency groups of pyproject.toml (diffusers: serve diffusers model folders too).
ARG EXTRAS="diffusers"
COPY pyproject.toml README.md ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split() for d in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project (a regular, non-editable install: only the Python packages go into site-packages),
# then what it serves from files: the page and the checkpoints.
COPY model/ model/
COPY server/ server/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
COPY web/ web/
COPY checkpoints/ checkpoints/

# The image runs as an ordinary user. UID 1000 is the usual first user of a Linux host, so files the
# training service writes to bind-mounted folders belong to you; --build-arg UID=... otherwise.
ARG UID=1000
RUN useradd --create-home --non-unique --uid "${UID}" --shell /usr/sbin/nologin app
USER ${UID}

# Every setting is an environment variable (server/settings.py); flags given to `docker run` win.
ENV DDPM_CHECKPOINT_DIR=/app/checkpoints \
    DDPM_WEB_DIR=/app/web \
    DDPM_DEVICE=auto \
    DDPM_PORT=8000

EXPOSE 8000

# python, not curl: the base image has no curl. A missing or failing answer exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DDPM_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["ddpm-serve", "--host", "0.0.0.0"]
