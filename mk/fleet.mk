# The podman fleet: base images, the local farm, the molecule scenario.
# Included by the Makefile, which defines VENV, CACHE, SEED and the targets
# $(VENV)/.installed (the venv, with requirements-dev.txt: ansible, molecule,
# the linters) and $(SEED)/.fetched (setuptools and wheel for the tests'
# local upstream index).
#
#   make images        the four base images (debootstrap, cached in .cache/images/)
#   make farm          a local farm: database, master, two builders (amd64, emulated armhf)
#   make farm-down     remove the farm's containers and network (images and cache kept)
#   make farm-status   the farm's containers and its queue
#   make test-fleet    molecule: six hosts, converge, idempotence, verify
#
# Variables: UPSTREAM (farm: another upstream index), FARM_PACKAGES, FARM_PORT,
# FARM_TIMEOUT (docs/farm.md); FLEET_DESTROY=never keeps the molecule
# containers after `make test-fleet` (default: always destroyed).

# podman with runc (crun fails here), netavark and aardvark-dns (containers on
# a podman network resolve each other by name), iptables for its NAT;
# debootstrap for the images; qemu-user-static and binfmt-support for armhf.
FLEET_APT_PACKAGES := podman runc netavark aardvark-dns iptables catatonit \
	debootstrap qemu-user-static binfmt-support ca-certificates
FLEET_IMAGES := bookworm-amd64 bullseye-amd64 trixie-amd64 bookworm-armhf
FLEET_DESTROY ?= always
UPSTREAM ?=
FARM_PACKAGES ?=
FARM_PORT ?=
FARM_TIMEOUT ?=

# podman on this kind of machine needs runc, no default ulimits and cgroupfs:
# a private configuration, never /etc/containers. The venv's tools come first.
FLEET_ENV := CONTAINERS_CONF=$(abspath molecule/podman/containers.conf) \
	PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: fleet-deps images farm farm-down farm-status test-fleet

$(CACHE)/fleet-apt.stamp:
	@mkdir -p $(CACHE)
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(FLEET_APT_PACKAGES) 2>/dev/null | grep -c 'install ok installed')" \
	    -lt "$(words $(FLEET_APT_PACKAGES))" ]; then \
	  echo "==> installing Debian packages: $(FLEET_APT_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(FLEET_APT_PACKAGES); \
	fi
	@touch $@

fleet-deps: $(CACHE)/fleet-apt.stamp $(VENV)/.installed

# The fleet's bullseye builder runs Python 3.9, which the newest setuptools no
# longer supports: the tests' upstream also serves the newest setuptools and
# wheel that still do (pip picks, for each builder, the newest it can use).
$(SEED)/.fetched-py39: $(SEED)/.fetched
	@echo "==> fetching setuptools and wheel for Python 3.9 (the fleet's bullseye builder)"
	@$(VENV)/bin/pip download -q --only-binary :all: --no-deps --python-version 3.9 \
	  -d $(SEED) setuptools wheel
	@touch $@

images: fleet-deps
	@$(FLEET_ENV) scripts/build-image.sh $(FLEET_IMAGES)

farm: fleet-deps
	@$(FLEET_ENV) UPSTREAM="$(UPSTREAM)" FARM_PACKAGES="$(FARM_PACKAGES)" \
	  FARM_PORT="$(FARM_PORT)" FARM_TIMEOUT="$(FARM_TIMEOUT)" \
	  $(VENV)/bin/python scripts/farm.py up

farm-down: $(CACHE)/fleet-apt.stamp
	@$(FLEET_ENV) $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3) scripts/farm.py down

farm-status: fleet-deps
	@$(FLEET_ENV) $(VENV)/bin/python scripts/farm.py status

test-fleet: images $(SEED)/.fetched-py39
	@echo "==> molecule test (scenario molecule/default: six hosts)"
	@time $(FLEET_ENV) PINWHEEL_SEED_DIR="$(abspath $(SEED))" \
	  $(VENV)/bin/molecule test --scenario-name default --destroy $(FLEET_DESTROY)
