package pkcs11

import (
	"context"

	"github.com/miekg/pkcs11"

	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// The optional capabilities this provider has: random bytes here; HMAC,
// import and export in material.go.
var _ provider.Randomer = (*Provider)(nil)

// Random implements provider.Randomer with C_GenerateRandom.
func (p *Provider) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 1 {
		return nil, kgerr.Invalid("at least one random byte must be asked for")
	}
	var out []byte
	err := p.run(ctx, true, opOther, func(sh pkcs11.SessionHandle) error {
		b, err := p.mod.ctx.GenerateRandom(sh, n)
		if err != nil {
			return err
		}
		out = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) != n {
		return nil, kgerr.New(kgerr.KindInternal, "the token returned fewer random bytes than asked")
	}
	return out, nil
}
