# KeyGrid HSM — build, run, test.
GO      ?= go
BIN     := bin/keygrid-hsm
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# make run: where the gateway listens and keeps its data.
LISTEN   ?= 127.0.0.1:8080
DATA_DIR ?= ./data
# make install: $(DESTDIR)$(PREFIX)/bin/keygrid-hsm and the systemd unit in
# $(DESTDIR)$(UNITDIR) (/etc/systemd/system: the unit names /usr/local/bin,
# an administrator's install, not a distribution package's).
PREFIX   ?= /usr/local
UNITDIR  ?= /etc/systemd/system
DESTDIR  ?=

.PHONY: build run install test test-deps vet fmt clean bench

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keygrid-hsm

# Start the gateway on the embedded default: software provider, SQLite,
# data under $(DATA_DIR) (./data), http://$(LISTEN) (127.0.0.1:8080).
run: build
	./$(BIN) serve --listen $(LISTEN) --data-dir $(DATA_DIR)

# Install the binary and the systemd unit (deploy/keygrid-hsm.service, whose
# ExecStart is rewritten to $(PREFIX)/bin). Then: docs/deployment.md.
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/keygrid-hsm
	sed 's#/usr/local/bin/keygrid-hsm#$(PREFIX)/bin/keygrid-hsm#g' deploy/keygrid-hsm.service > $(DESTDIR)$(UNITDIR)/keygrid-hsm.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/keygrid-hsm.service

# Install what the tests need when it is missing, then run the whole suite.
test: test-deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	@artifacts=$${KEYGRID_ARTIFACTS:-$$(mktemp -d /tmp/keygrid-artifacts.XXXXXX)}; \
	echo "test artifacts (console screenshots): $$artifacts"; \
	KEYGRID_ARTIFACTS=$$artifacts $(GO) test -race -count=1 -timeout 20m ./...

test-deps:
	@scripts/test-deps.sh

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin

# The gateway beside the raw HSM and Go's crypto in one run; writes
# bench/results/latest.json. Needs what `make test` installs.
bench: test-deps
	$(GO) run ./bench
