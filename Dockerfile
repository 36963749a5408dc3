# A CPU-only image of the project: the test suite by default, the demo on request.
#
#   docker build -t centerclip .
#   docker run --rm centerclip                          # the test suite
#   docker run --rm centerclip bash scripts/demo.sh     # the demo (outputs in /app/outputs/demo)
FROM python:3.11-slim

WORKDIR /app
COPY requirements.txt requirements-dev.txt ./
# The README's install step, into /app/.venv where the scripts look for it. torch and torchvision
# come first from PyTorch's CPU-only index (the default wheels bring ~3 GB of CUDA libraries),
# within the versions requirements.txt allows (-c); the second install then keeps them.
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir -c requirements.txt torch torchvision \
        --index-url https://download.pytorch.org/whl/cpu \
    && .venv/bin/pip install --no-cache-dir -r requirements-dev.txt
COPY . .
ENV PATH=/app/.venv/bin:$PATH

CMD ["python", "-m", "pytest", "-q", "tests"]
