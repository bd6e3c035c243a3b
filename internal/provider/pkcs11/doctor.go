package pkcs11

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// Doctor checks, step by step, that a provider configuration can reach its
// HSM: it loads the module, lists slots and tokens, finds the configured
// token, logs in, lists the mechanisms the gateway needs and which are
// missing, and signs and verifies with a temporary key; an aws-cloudhsm
// instance watching its cluster first describes it (cluster.go). When all
// that passed, it opens the provider and shows what it discovered: the key
// specs and algorithms it offers, and returns them (the caller compares
// them with the gateway's algorithm table: what the token lacks, and why,
// is in Missing). It prints a PASS/FAIL (or WARN) line per check to out and
// reports whether all passed. The PIN is never printed.
func Doctor(name, typ string, c Config, out io.Writer) (provider.Capabilities, bool) {
	if !doctorModule(name, typ, c, out) {
		return provider.Capabilities{}, false
	}
	p, err := Open(context.Background(), name, typ, c, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(out, "FAIL  %-12s %v\n", "capabilities", err)
		return provider.Capabilities{}, false
	}
	defer p.Close()
	caps := p.Capabilities()
	fmt.Fprintf(out, "PASS  %-12s %s\n", "capabilities", strings.Join(caps.Strings(), " "))
	return caps, true
}

func doctorModule(name, typ string, c Config, out io.Writer) bool {
	ok := true
	line := func(pass bool, check, format string, args ...any) {
		status := "PASS"
		if !pass {
			status, ok = "FAIL", false
		}
		fmt.Fprintf(out, "%s  %-12s %s\n", status, check, fmt.Sprintf(format, args...))
	}
	field := "providers." + name + ".config"
	cfg, err := c.resolve(typ, field)
	if err != nil {
		line(false, "config", "%v", err)
		return false
	}
	line(true, "config", "%s provider %q, library %s, PIN from %s", typ, name, cfg.LibraryPath, pinSource(cfg.PinEnv, cfg.PinFile))
	if cfg.cluster != nil && !doctorCluster(*cfg.cluster, out) {
		ok = false
	}

	mod, err := openModule(cfg.LibraryPath, cfg.isolation, hostEnvOf(os.Environ(), cfg.PinEnv), slog.New(slog.DiscardHandler))
	if err != nil {
		line(false, "module", "%v", err)
		return false
	}
	defer mod.release()
	mod.mu.RLock()
	defer mod.mu.RUnlock()
	pc := mod.ctx
	if info, err := pc.GetInfo(); err == nil {
		line(true, "module", "%s %s, Cryptoki %d.%d", strings.TrimSpace(info.ManufacturerID), strings.TrimSpace(info.LibraryDescription),
			info.CryptokiVersion.Major, info.CryptokiVersion.Minor)
	} else {
		line(false, "module", "C_GetInfo: %v", err)
		return false
	}

	slots, err := pc.GetSlotList(true)
	if err != nil {
		line(false, "slots", "C_GetSlotList: %v", err)
		return false
	}
	var tokens []tokenInfo
	var listed []string
	for _, s := range slots {
		ti, err := pc.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		t := tokenInfo{slot: s, label: strings.TrimSpace(ti.Label), serial: strings.TrimSpace(ti.SerialNumber)}
		tokens = append(tokens, t)
		listed = append(listed, fmt.Sprintf("slot %d: %q serial %s", t.slot, t.label, t.serial))
	}
	line(len(tokens) > 0, "slots", "%d token(s): %s", len(tokens), strings.Join(listed, "; "))
	tok, err := selectSlot(tokens, cfg.Settings, cfg.firstSlotDefault)
	if err != nil {
		line(false, "token", "%v", err)
		return false
	}
	line(true, "token", "using %q (serial %s, slot %d)", tok.label, tok.serial, tok.slot)

	sh, err := pc.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		line(false, "session", "C_OpenSession (read-write): %v", err)
		return false
	}
	defer pc.CloseSession(sh)
	if err := pc.Login(sh, pkcs11.CKU_USER, cfg.pin); err != nil {
		if code, _ := ckrCode(err); code != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			line(false, "login", "C_Login: %s", kgerr.Classify(toError(err, opOther)).Message)
			return false
		}
	}
	line(true, "login", "logged in as the token user")

	needed := usedMechanisms()
	list, err := pc.GetMechanismList(tok.slot)
	if err != nil {
		line(false, "mechanisms", "C_GetMechanismList: %v", err)
	} else {
		have := map[uint]bool{}
		for _, m := range list {
			have[m.Mechanism] = true
		}
		var present, missing []string
		for _, n := range needed {
			if have[n.code] {
				present = append(present, n.name)
			} else {
				missing = append(missing, n.name)
			}
		}
		// Missing mechanisms are reported, not failed: the gateway offers
		// what the token has. A listed mechanism may still lack a
		// parameter the gateway needs (OAEP with SHA-256 on SoftHSM2): the
		// algorithms line, from the probed capabilities, says.
		line(true, "mechanisms", "%d of %d the gateway uses are listed by the token; not listed: %s (what the token performs with them: the algorithms line)",
			len(present), len(needed), orNone(missing))
	}

	priv, key, _, destroy, err := scratchEC(pc, sh, "P-256", "keygrid-doctor")
	if err != nil {
		line(false, "sign/verify", "a temporary P-256 key: %v", err)
		return ok
	}
	defer destroy(sh)
	d := sha256.Sum256([]byte("keygrid doctor"))
	valid, err := signECDSA(pc, sh, priv, key, d[:])
	if err != nil {
		line(false, "sign/verify", "C_SignInit/C_Sign: %v", err)
		return ok
	}
	line(valid, "sign/verify", "ES256 with a temporary key: signature %s", map[bool]string{true: "valid", false: "INVALID"}[valid])
	return ok
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
