# Everything a fresh machine needs is installed by these targets themselves; each step is a
# stamp file, so a second run is quick.
# Never `python -m ...` from the repo root: `-m` puts the current directory first on sys.path,
# where the `operator/` folder would shadow the stdlib module of that name.
PY      := .venv/bin/python
PIP     := .venv/bin/pip --disable-pip-version-check
VENV    := .venv/.installed
NODE    := tests/node/node_modules/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-transcoder test bench crds lock sysdeps binaries cluster clean

# The whole pipeline (API upload + queue.add -> intake -> VideoTranscode -> operator -> Job ->
# transcoder -> Cloudinary -> Lecture READY + notifications), every component its own process on
# this machine, on a generated 720p lecture or yours: `make demo VIDEO=path/to/lecture.mp4`.
# The output MP4 is kept in demo-output/.
demo: sysdeps $(VENV) $(NODE) binaries
	$(PY) scripts/demo.py $(if $(VIDEO),--video "$(VIDEO)")

# A one-node local cluster of the real control plane (etcd, kube-apiserver, controller manager,
# scheduler) and our node agent, in the foreground; prints `export KUBECONFIG=...`. Ctrl-C stops it.
cluster: sysdeps $(VENV) binaries
	$(PY) hack/cluster.py

# etcd, the Kubernetes control plane and FerretDB, built from their Go modules (hack/*/go.mod)
# once per machine and cached in ~/.cache/lectern (a cold build: ~16 min on 2 cores).
binaries: $(VENV)
	@$(PY) hack/build.py >/dev/null

# The transcoder alone on a generated 1080p lecture: progress bar, then input vs output.
demo-transcoder: sysdeps $(VENV)
	$(PY) scripts/demo_transcoder.py

test: sysdeps $(VENV) $(NODE) binaries
	.venv/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

# VMAF needs the libvmaf-enabled ffmpeg of the `bench` extra (imageio-ffmpeg). bench/encode.py
# generates its corpus once (bench/out/corpus/, ~15 min on 2 cores) and then measures every
# clip against the seed's command (~25-35 min on 2 busy cores; progress printed per run).
bench: sysdeps $(VENV) $(NODE) binaries
	$(PIP) install -q -e '.[test,bench]'
	$(PY) bench/encode.py
	$(PY) bench/transcode.py
	$(PY) bench/hls.py
	$(PY) bench/operator.py
	$(PY) bench/pipeline.py --write

crds: $(VENV)
	.venv/bin/lectern-crds --write

# The images install exactly these, hash-checked (`pip install --require-hashes --no-deps`):
# every runtime dependency of each image's extra (and the build backend), pinned with the sha256
# of every file PyPI has for that version (any platform the image is built for). Run after a
# change to pyproject.toml's dependencies; tests/helm/test_images.py checks the locks cover them.
LOCK := env -u PIP_FIND_LINKS .venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --rebuild
lock: $(VENV)
	$(LOCK) --extra transcoder --output-file requirements/transcoder.lock pyproject.toml
	$(LOCK) --extra operator --output-file requirements/operator.lock pyproject.toml
	$(LOCK) --only-build-deps --all-build-deps --output-file requirements/build.lock pyproject.toml

# ffmpeg, redis-server, openssl and chromium (the HLS playback test) come from Debian; skipped when already on the PATH. Go (>= 1.26, for
# the local cluster) must be there already: Debian's is too old.
sysdeps:
	@command -v go >/dev/null || { echo "make: Go >= 1.26 is needed to build the local cluster (hack/build.py) (Debian's golang is too old)" >&2; exit 1; }
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

$(NODE): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf .venv tests/node/node_modules
