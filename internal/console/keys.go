package console

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/service"
)

// pageSize is the keys one page of the list shows; scanPages bounds the
// service pages one list page reads when a name prefix filters them.
const (
	pageSize  = 50
	scanBatch = 200
	scanPages = 50
)

// publicMessage is err's public message as an error (never its cause).
func publicMessage(err error) error { return errors.New(kgerr.Classify(err).Message) }

func joinInts(v []int, sep string) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}

// listCursor is where a page of the list starts: a page of the service's
// listing (its token) and how many of its keys to skip. It lets a name
// prefix filter the service's pages without skipping or repeating a key.
type listCursor struct {
	T string `json:"t,omitempty"`
	S int    `json:"s,omitempty"`
}

func (lc listCursor) encode() string {
	b, _ := json.Marshal(lc)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (listCursor, error) {
	var lc listCursor
	if s == "" {
		return lc, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &lc) != nil || lc.S < 0 || lc.S > scanBatch {
		return lc, kgerr.Invalid("the page cursor is not valid: start from the first page")
	}
	return lc, nil
}

type keysData struct {
	Provider, State, Prefix string
	Providers               []string
	States                  []string
	Keys                    []service.Key
	Next                    string // query string of the next page, "" on the last
	CanCreate               bool
}

// listKeys lists the keys the principal may see (the service filters them
// by its scope), filtered by provider, state and name prefix.
func (c *Console) listKeys(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := keysData{Provider: q.Get("provider"), State: q.Get("state"), Prefix: q.Get("prefix"),
		States: []string{"active", "inactive", "pending_deletion", "pending", "deleting"}}
	for _, p := range c.svc.Providers(r.Context()) {
		d.Providers = append(d.Providers, p.Name)
	}
	d.CanCreate = principal(r).Can(auth.ActionCreate)
	cur, err := decodeCursor(q.Get("page"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	keys, next, err := c.scanKeys(r, d, cur)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d.Keys = keys
	if next != nil {
		v := url.Values{}
		for k, s := range map[string]string{"provider": d.Provider, "state": d.State, "prefix": d.Prefix} {
			if s != "" {
				v.Set(k, s)
			}
		}
		v.Set("page", next.encode())
		d.Next = "?" + v.Encode()
	}
	c.render(w, r, http.StatusOK, "keys", page{Title: "Keys", Nav: "keys", Data: d})
}

// scanKeys reads the service's listing from cur until a page is full; it
// returns the cursor of the next page (nil: none).
func (c *Console) scanKeys(r *http.Request, d keysData, cur listCursor) ([]service.Key, *listCursor, error) {
	var out []service.Key
	for range scanPages {
		l, err := c.svc.ListKeys(r.Context(), service.ListOptions{Provider: d.Provider, State: d.State, Limit: scanBatch, PageToken: cur.T})
		if err != nil {
			return nil, nil, err
		}
		for i := cur.S; i < len(l.Keys); i++ {
			if !strings.HasPrefix(l.Keys[i].Name, d.Prefix) {
				continue
			}
			out = append(out, l.Keys[i])
			if len(out) == pageSize {
				switch {
				case i+1 < len(l.Keys):
					return out, &listCursor{T: cur.T, S: i + 1}, nil
				case l.NextPageToken != "":
					return out, &listCursor{T: l.NextPageToken}, nil
				}
				return out, nil, nil
			}
		}
		if l.NextPageToken == "" {
			return out, nil, nil
		}
		cur = listCursor{T: l.NextPageToken}
	}
	return out, &cur, nil // more to scan: the next page goes on
}

// principal is the signed-in principal of a request.
func principal(r *http.Request) *auth.Principal { return service.CallerFrom(r.Context()).Auth }

type keyAction struct {
	Action, Label string
	Danger        bool
}

type keyData struct {
	Key        *service.Key
	Public     *publicView
	PublicErr  string
	Records    []audit.Record
	AuditErr   string
	Actions    []keyAction
	Secret     bool
	CurrentRef string
}

type publicView struct {
	Version int
	PEM     string
	JWK     string
}

// actions are the state changes offered on a key page: those the
// principal's role allows and the key's state admits. The service decides
// again when one is posted.
var actions = []struct {
	keyAction
	auth   auth.Action
	states []string
}{
	{keyAction{"rotate", "Rotate", false}, auth.ActionRotate, []string{"active"}},
	{keyAction{"deactivate", "Deactivate", false}, auth.ActionDeactivate, []string{"active"}},
	{keyAction{"activate", "Activate", false}, auth.ActionActivate, []string{"inactive"}},
	{keyAction{"schedule-deletion", "Schedule deletion", true}, auth.ActionDelete, []string{"active", "inactive"}},
	{keyAction{"cancel-deletion", "Cancel deletion", false}, auth.ActionCancelDeletion, []string{"pending_deletion"}},
}

func (c *Console) keyPage(w http.ResponseWriter, r *http.Request) {
	k, err := c.svc.GetKey(r.Context(), r.PathValue("key"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d := keyData{Key: k, Secret: alg.Secret(alg.KeyType(k.KeyType))}
	for _, v := range k.Versions {
		if v.Version == k.Version {
			d.CurrentRef = v.ProviderRef
		}
	}
	if !d.Secret && k.Version > 0 {
		if pv, err := c.publicView(r, k.ID, 0); err != nil {
			d.PublicErr = kgerr.Classify(err).Message
		} else {
			d.Public = pv
		}
	}
	p := principal(r)
	for _, a := range actions {
		if p.Can(a.auth) && contains(a.states, k.State) {
			d.Actions = append(d.Actions, a.keyAction)
		}
	}
	if p.Can(auth.ActionAuditRead) {
		d.Records, err = c.recentRecords(r, 20, func(rec *audit.Record) bool { return rec.KeyID == k.ID })
		if err != nil {
			d.AuditErr = err.Error()
		}
	}
	c.render(w, r, http.StatusOK, "key", page{Title: k.Name, Nav: "keys", Data: d})
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// publicView is the public key of a version (0: current) as PEM and JWK,
// read through the service (audited as public_key, as the API's).
func (c *Console) publicView(r *http.Request, ref string, version int) (*publicView, error) {
	pk, err := c.svc.PublicKey(r.Context(), ref, version)
	if err != nil {
		return nil, err
	}
	jwk, err := alg.JWK(pk.Key, fmt.Sprintf("%s.%d", pk.KeyID, pk.KeyVersion), alg.Algorithm(pk.Algorithm))
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(jwk, "", "  ")
	if err != nil {
		return nil, err
	}
	return &publicView{Version: pk.KeyVersion, PEM: alg.PublicKeyPEM(pk.DER), JWK: string(b)}, nil
}

func (c *Console) publicPEM(w http.ResponseWriter, r *http.Request) { c.download(w, r, "pem") }
func (c *Console) publicJWK(w http.ResponseWriter, r *http.Request) { c.download(w, r, "jwk") }

// download serves the public key of ?version= (default current) as a file.
func (c *Console) download(w http.ResponseWriter, r *http.Request, format string) {
	version := 0
	if s := r.URL.Query().Get("version"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			c.fail(w, r, kgerr.Invalid("version must be a positive number"))
			return
		}
		version = n
	}
	pv, err := c.publicView(r, r.PathValue("key"), version)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	name := fmt.Sprintf("%s-v%d", safeFileName(r.PathValue("key")), pv.Version)
	switch format {
	case "pem":
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.pem"`)
		w.Write([]byte(pv.PEM))
	default:
		w.Header().Set("Content-Type", "application/jwk+json")
		w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.jwk.json"`)
		w.Write([]byte(pv.JWK + "\n"))
	}
}

// safeFileName keeps the characters of s that are safe in a file name.
func safeFileName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}
