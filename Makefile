# KeyGrid HSM — build, run, test.
GO      ?= go
BIN     := bin/keygrid-hsm
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build run test test-deps vet fmt clean bench

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keygrid-hsm

# Start the gateway on the embedded default: software provider, SQLite,
# data under ./data, http://127.0.0.1:8080.
run: build
	./$(BIN) serve

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
