package console_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keygrid/keygrid-hsm/internal/service"
)

// chromium finds Debian's chromium; a missing one skips the test, or fails
// it under KEYGRID_REQUIRE_SOFTHSM=1 (CI), which scripts/test-deps.sh
// installs it for.
func chromium(t *testing.T) string {
	for _, n := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("KEYGRID_REQUIRE_SOFTHSM") == "1" {
		t.Fatal("chromium is not installed (scripts/test-deps.sh installs it)")
	}
	t.Skip("chromium is not installed")
	return ""
}

// artifacts is the directory the screenshots go to: KEYGRID_ARTIFACTS, or a
// new temporary directory; its path is printed.
func artifacts(t *testing.T) string {
	dir := os.Getenv("KEYGRID_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "keygrid-console-artifacts-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("console screenshots in %s", dir)
	fmt.Printf("console test artifacts (screenshots): %s\n", dir)
	return dir
}

func TestBrowser(t *testing.T) {
	bin := chromium(t)
	g := newGateway(t, nil)
	// A key of another scope, which the operator must never see.
	if _, err := g.srv.Service().CreateKey(adminCtx(), service.CreateKeyRequest{Name: "team-b-secret",
		Spec: service.KeySpec{KeyType: "EC", Curve: "P-256"}}); err != nil {
		t.Fatal(err)
	}
	other, _ := g.srv.Service().GetKey(adminCtx(), "team-b-secret")
	dir := artifacts(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.WindowSize(1400, 1000))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	defer cancel()

	run := func(what string, acts ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		for _, a := range acts {
			if _, err := chromedp.Run(ctx, a); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	source := func() string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
		if err != nil {
			t.Fatalf("page source: %v", err)
		}
		return s
	}
	count := func(expr string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
		if err != nil {
			t.Fatalf("evaluate: %v", err)
		}
		return n
	}
	shot := func(name string) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	signIn := func(token string) {
		t.Helper()
		run("sign in", chromedp.Navigate(g.ts.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#token")),
			chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#sign-in")),
			chromedp.WaitVisible(chromedp.CSS("#providers")))
	}

	// Sign in as the admin: the overview shows the provider.
	signIn(adminToken)
	if s := text("#providers"); !strings.Contains(s, "software") || !strings.Contains(s, "healthy") {
		t.Fatalf("providers: %q", s)
	}
	shot("overview.png")

	// Create a key.
	run("create", chromedp.Navigate(g.ts.URL+"/ui/keys/new"), chromedp.WaitVisible(chromedp.CSS("#name")),
		chromedp.SetValue(chromedp.CSS("#provider_spec"), "software|EC:P-256"),
		chromedp.SendKeys(chromedp.CSS("#name"), "team-a-signer"),
		chromedp.SendKeys(chromedp.CSS("#metadata"), "owner=payments"),
		chromedp.SendKeys(chromedp.CSS("#confirm"), "team-a-signer"),
		chromedp.Click(chromedp.CSS("#create")), chromedp.WaitVisible(chromedp.CSS("#key-name")))
	if s := text("#key-version"); s != "1" {
		t.Fatalf("version after create = %q", s)
	}
	// Rotate it: version 2, and its audit record on the key page.
	run("rotate", chromedp.Click(chromedp.CSS("#action-rotate")), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.SendKeys(chromedp.CSS("#confirm"), "team-a-signer"), chromedp.Click(chromedp.CSS("#confirm-submit")),
		chromedp.WaitVisible(chromedp.CSS("#flash")))
	if s := text("#key-version"); s != "2" {
		t.Fatalf("version after rotate = %q", s)
	}
	if s := text("#versions"); !strings.Contains(s, "2") {
		t.Fatalf("versions: %q", s)
	}
	rotated := count(`document.querySelectorAll('#records tr[data-operation="rotate"][data-outcome="success"]').length`)
	if rotated != 1 {
		t.Fatalf("%d rotate records on the key page", rotated)
	}
	if s := text("#public-pem"); !strings.Contains(s, "BEGIN PUBLIC KEY") {
		t.Fatalf("public key: %q", s)
	}
	shot("key.png")
	// Deactivate it.
	run("deactivate", chromedp.Click(chromedp.CSS("#action-deactivate")), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.SendKeys(chromedp.CSS("#confirm"), "team-a-signer"), chromedp.Click(chromedp.CSS("#confirm-submit")),
		chromedp.WaitVisible(chromedp.CSS("#flash")))
	if s := text("#key-state"); s != "inactive" {
		t.Fatalf("state after deactivate = %q", s)
	}
	if src := source(); strings.Contains(src, adminToken) {
		t.Fatal("the page source shows the token")
	}
	// Sign out: the console asks to sign in again.
	run("sign out", chromedp.Click(chromedp.CSS("#sign-out")), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.Navigate(g.ts.URL+"/ui/keys"), chromedp.WaitVisible(chromedp.CSS("#token")))

	// The scoped operator sees its key, never team-b's: not in the list,
	// not by URL; and no audit page (the API gives operators no audit log).
	signIn(operatorToken)
	run("list", chromedp.Navigate(g.ts.URL+"/ui/keys"), chromedp.WaitVisible(chromedp.CSS("#keys")))
	if s := text("#keys"); !strings.Contains(s, "team-a-signer") || strings.Contains(s, "team-b") {
		t.Fatalf("operator's list: %q", s)
	}
	run("by url", chromedp.Navigate(g.ts.URL+"/ui/keys/"+other.ID), chromedp.WaitVisible(chromedp.CSS("#error")))
	if src := source(); strings.Contains(src, "team-b") || !strings.Contains(src, "403") {
		t.Fatalf("operator reached team-b's key by URL")
	}
	run("audit", chromedp.Navigate(g.ts.URL+"/ui/audit"), chromedp.WaitVisible(chromedp.CSS("#error")))
	if src := source(); strings.Contains(src, "team-b") || strings.Contains(src, "team-a-signer") || !strings.Contains(src, "403") {
		t.Fatal("an operator reads the audit log in the console")
	}
	if src := source(); strings.Contains(src, operatorToken) {
		t.Fatal("the page source shows the token")
	}
	// The operator may not rotate: no button, and the service refuses it.
	run("key", chromedp.Navigate(g.ts.URL+"/ui/keys/team-a-signer"), chromedp.WaitVisible(chromedp.CSS("#key-name")))
	buttons := count(`document.querySelectorAll('#actions a').length`)
	if buttons != 0 {
		t.Fatalf("operator is offered %d actions", buttons)
	}
}
