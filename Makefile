# Set-up is two commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_FEN ?= r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3

.PHONY: install assets browser test lint typecheck docs bench fuzz demo notebook clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fetched files (checksummed), then what maia-1900 self-play makes (seeded, cached; a few minutes the first time):
# the test positions of seeds 0-2 (lczerolens.positions, used by tests, docs and notebooks) and the mate puzzles.
assets: $(STAMP)
	$(BIN)/python assets/fetch.py
	PYTHONPATH=. $(BIN)/python -c "from lczerolens.positions import load_positions as p; [p(300, seed=s) for s in (0, 1, 2)]"
	test -f assets/cache/puzzles-selfplay.csv || PYTHONPATH=. $(BIN)/python scripts/make_puzzles.py

lint: $(STAMP) typecheck
	$(BIN)/ruff check .

# mypy --strict on the modules listed in pyproject.toml ([tool.mypy] files).
typecheck: $(STAMP)
	$(BIN)/mypy

# The documentation site, into site/; any warning fails the build. Its examples run in tests/test_docs.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The explorer's browser tests need Chromium and its driver: installed here when missing and run as root
# (a fresh Debian CI machine); otherwise those tests skip with a one-line reason.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
		|| echo "chromium could not be installed: the browser tests will skip"; fi

test: assets lint docs browser
	$(BIN)/python -m pytest -n 2 -q

bench: assets
	$(BIN)/python -m benchmarks.run --out bench-results/results.md

# Mutation fuzzing of both loaders and of FENs (long: 10,000 cases per kind; FUZZ_CASES=1000 for a shorter run).
FUZZ_CASES ?= 10000
fuzz: assets
	$(BIN)/python -m benchmarks.fuzz --cases $(FUZZ_CASES) --workers 2

demo: assets
	mkdir -p demo
	$(BIN)/lczerolens explain assets/cache/maia-1900.pb.gz "$(DEMO_FEN)" --out demo/heatmap.svg

# Opens notebooks/ in JupyterLab (installed into the venv on first use; not part of `make install`).
notebook: assets
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet jupyterlab
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) assets/cache demo bench-results site
