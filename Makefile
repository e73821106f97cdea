# The README's two commands: `make run` (the demo sale on 127.0.0.1:8080) and `make test`
# (everything, from a fresh Debian 12 machine with a Rust toolchain).

NGINX ?= /usr/sbin/nginx
BUILD := $(CURDIR)/.build
# The nginx source tree the ngx crate generates its bindings from. By default a copy of
# Debian's, configured like Debian's nginx; point both at another configured tree to build
# for another nginx.
NGINX_SOURCE_DIR ?= $(BUILD)/nginx
NGINX_BUILD_DIR ?= $(NGINX_SOURCE_DIR)/objs
export NGINX_SOURCE_DIR NGINX_BUILD_DIR

MODULE := $(BUILD)/modules/ngx_http_flash_sale_module.so

.PHONY: all deps nginx-source build check unit t test test-matrix test-matrix-quick deb test-deb run run-hosts clean

all: build

deps:
	scripts/install-deps

nginx-source: $(NGINX_BUILD_DIR)/ngx_auto_config.h

$(NGINX_BUILD_DIR)/ngx_auto_config.h:
	scripts/nginx-source $(NGINX_SOURCE_DIR)

build: nginx-source
	cargo build --release
	install -D -m 0755 target/release/libngx_http_flash_sale_module.so $(MODULE)

# scripts/msrv: rust-version against Cargo.lock (clippy checks the code's own use of std against it).
check: nginx-source
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	scripts/msrv

unit: nginx-source
	cargo test

t: build
	TEST_NGINX_BINARY=$(NGINX) TEST_NGINX_LOAD_MODULES=$(MODULE) scripts/prove

# Everything CI runs: the checks, the unit tests, the t/ suite on Debian's nginx, then every
# other supported nginx built with the module loaded and t/gate.t run on it (the whole suite on
# the current stable, 1.30.4), and the Debian package installed, used and removed.
test: deps
	$(MAKE) check unit t
	MATRIX_FULL=1.30.4 scripts/matrix --quick 1.24.0 1.26.3 1.28.3 1.30.4 1.31.4
	$(MAKE) test-deb

# Every supported nginx version: nginx built, the module built against it and loaded, and the
# t/ suite run against it (scripts/matrix; a table at the end, also in .build/matrix/results.md).
test-matrix: deps
	scripts/matrix

# The same, quicker: every version built and loaded and t/gate.t run on each; the whole suite
# on Debian's 1.22.1 and on the current stable 1.30.4.
test-matrix-quick: deps
	scripts/matrix --quick

# The Debian package of the module, for the nginx it was built against (Debian's by default):
# .build/libnginx-mod-http-flash-sale_<version>_<arch>.deb
deb: build
	scripts/deb $(MODULE) $(NGINX_SOURCE_DIR) $(BUILD)

# Installs that package with apt, gates requests with the system's nginx, removes it (this
# changes /etc/nginx while it runs, and purges the package at the end).
test-deb: build
	scripts/test-deb "$$(scripts/deb $(MODULE) $(NGINX_SOURCE_DIR) $(BUILD))"

run: deps build
	NGINX=$(NGINX) MODULE=$(MODULE) scripts/run

# Two hosts, one sale, through Redis (see "Several hosts" in the README).
run-hosts: deps build
	NGINX=$(NGINX) MODULE=$(MODULE) scripts/run-hosts

clean:
	cargo clean
	rm -rf $(BUILD) .run .run-hosts t/servroot*
