// Package registry lists every provider type this binary has. It is the
// one place a new provider type is added.
package registry

import (
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/provider/pkcs11"
	"github.com/keygrid/keygrid-hsm/internal/provider/software"
)

// All returns the factories of every provider type.
func All() provider.Registry {
	return provider.Registry{
		software.Type:          software.New,
		pkcs11.TypePKCS11:      pkcs11.New,
		pkcs11.TypeAWSCloudHSM: pkcs11.New,
	}
}
