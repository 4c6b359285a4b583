# Convenience targets around cargo for C/C++ users:
#   make                                  cargo build --release
#   make install PREFIX=/opt/autopipeline  install the built library (does not build; see scripts/install.sh)
#   make install PREFIX=/tmp/ap PROFILE=debug DESTDIR=/tmp/stage
PREFIX  ?= /usr/local
PROFILE ?= release
CARGO   ?= cargo
DESTDIR ?=

all:
	$(CARGO) build --profile $(PROFILE)

install:
	scripts/install.sh --profile $(PROFILE) $(if $(DESTDIR),--destdir $(DESTDIR)) $(PREFIX)

.PHONY: all install
