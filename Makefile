# make demo  -- set up, pretrain SimCLR on Fashion-MNIST, evaluate it beside the raw-pixel baseline, write the report
# make test  -- set up (Chromium for the report's browser test too), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.replearn-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test data browser lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when we may install it; otherwise replearn finds or downloads it.
data:
	@if [ ! -f $(FMNIST) ] && [ -z "$$REPLEARN_DATA" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; replearn will look elsewhere"; fi

# Chromium opens the HTML report in the report's browser test; Debian's package when we may install it.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: could not install chromium; the report's browser test will fail"; fi

demo: $(STAMP) data
	rm -rf runs/demo runs/demo-raw
	$(BIN)/replearn pretrain --config configs/demo.yaml --out runs/demo
	$(BIN)/replearn evaluate runs/demo --data fashion-mnist
	$(BIN)/replearn evaluate --baseline raw --data fashion-mnist --out runs/demo-raw
	$(BIN)/replearn results runs/demo runs/demo-raw
	$(BIN)/replearn report runs/demo

test: $(STAMP) data browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/python bench/throughput.py --write docs/benchmarks.md

clean:
	rm -rf runs .pytest_cache
