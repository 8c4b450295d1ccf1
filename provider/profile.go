package provider

import "github.com/hsmkeys/hsmkeys/provider/internal/p11"

// TokenProfile is what hsmkeys knows of the kind of token it talks to,
// where tokens differ; it is chosen by the token's identity (manufacturer
// and model). What is not known is assumed the unsafe way.
type TokenProfile struct {
	Name string // "SoftHSM 2", or "unknown (manufacturer model)"
	// PublicObjectsProtectedAtRest: the token stores public objects'
	// attribute values encrypted at rest. False on SoftHSM 2 (it encrypts
	// private objects only) and on tokens hsmkeys does not know. Where it
	// is false, every SO-made AES KEK (the SO can only create public
	// objects) sits in clear in the token's storage, so hsmkeys makes RSA
	// KEKs by default and an AES KEK only when asked to
	// (KEKOptions.AllowExposedAtRest).
	PublicObjectsProtectedAtRest bool
}

func profileOf(t TokenInfo) TokenProfile {
	p := p11.ProfileFor(t.Manufacturer, t.Model)
	return TokenProfile{Name: p.Name, PublicObjectsProtectedAtRest: p.PublicObjectsProtectedAtRest}
}

// Profile is the profile of the token this provider opened.
func (p *Provider) Profile() TokenProfile { return profileOf(p.token) }

// Profile is the profile of the token this Admin manages.
func (a *Admin) Profile() TokenProfile { return profileOf(a.token) }

// DefaultKEKType is the KEK type 'hsmkeys kek create' makes when none is
// named: an AES-256 KEK where public objects are protected at rest, and
// elsewhere an RSA-3072 KEK, whose unwrapping half is a private object
// (encrypted at rest under the user PIN on SoftHSM).
func (t TokenProfile) DefaultKEKType() KEKType {
	if t.PublicObjectsProtectedAtRest {
		return KEKAES256
	}
	return KEKRSA3072
}
