#!/usr/bin/env bash
# Installs the system packages the test suite needs when they are missing:
# SoftHSM2 (the PKCS#11 token), OpenSC's pkcs11-tool and OpenSSL (independent
# checkers), p11-kit's server and client module (the network to the HSM in
# fault tests), PostgreSQL (the shared store), curl (SigV4-signed XKS
# requests, as AWS's XKS compliance client sends them), and the second PKCS#11
# module of the tests: tpm2-pkcs11 on a software TPM (swtpm, the tpm2-abrmd
# resource manager on a private D-Bus bus, tpm2-tools and tpm2_ptool to make
# the token), systemd (systemd-analyze verify of deploy/keygrid-hsm.service), jq and
# xxd (the README walkthrough, run by internal/walkthrough). As root it uses apt-get; as anyone else it says exactly what to
# install.
set -euo pipefail

packages=(softhsm2 opensc p11-kit p11-kit-modules openssl postgresql gcc curl
  swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools dbus-daemon chromium systemd jq xxd)
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

have softhsm2-util || missing+=(softhsm2)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
have pkcs11-tool || missing+=(opensc)
have p11-kit || missing+=(p11-kit)
ls /usr/lib/*/pkcs11/p11-kit-client.so >/dev/null 2>&1 || missing+=(p11-kit-modules)
have openssl || missing+=(openssl)
[ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || missing+=(postgresql)
have gcc || missing+=(gcc)
have swtpm || missing+=(swtpm)
have swtpm_setup || missing+=(swtpm-tools)
have tpm2_dictionarylockout || missing+=(tpm2-tools)
have tpm2-abrmd || missing+=(tpm2-abrmd)
ls /usr/lib/*/libtss2-tcti-tabrmd.so.0 >/dev/null 2>&1 || missing+=(libtss2-tcti-tabrmd0)
ls /usr/lib/*/libtss2-tcti-swtpm.so.0 >/dev/null 2>&1 || missing+=(libtss2-tcti-swtpm0)
ls /usr/lib/*/pkcs11/libtpm2_pkcs11.so >/dev/null 2>&1 || missing+=(libtpm2-pkcs11-1)
have tpm2_ptool || missing+=(libtpm2-pkcs11-tools)
have dbus-daemon || missing+=(dbus-daemon)
have curl || missing+=(curl)
# The console's browser tests drive a headless Chromium (chromedp).
have chromium || missing+=(chromium)
# deploy/: systemd-analyze verify checks the systemd unit.
have systemd-analyze || missing+=(systemd)
# internal/walkthrough: the README's walkthrough runs with jq and xxd.
have jq || missing+=(jq)
have xxd || missing+=(xxd)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# unique
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -eq 0 ] && have apt-get; then
  echo "test-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}"
  }
  exit 0
fi
echo "test-deps: missing packages: ${missing[*]}" >&2
echo "test-deps: install them with: sudo apt-get install -y ${packages[*]}" >&2
if [ "${KEYGRID_REQUIRE_SOFTHSM:-}" = "1" ]; then
  exit 1
fi
echo "test-deps: continuing; tests that need them will skip (they fail when KEYGRID_REQUIRE_SOFTHSM=1)" >&2
