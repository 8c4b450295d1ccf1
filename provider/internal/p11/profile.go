package p11

import "strings"

// Profile holds what hsmkeys knows of a kind of token where tokens differ.
// It is chosen by the token's identity (C_GetTokenInfo manufacturer and
// model); what cannot be known from the identity is assumed the unsafe way.
type Profile struct {
	// Name names the profile ("SoftHSM 2", "unknown").
	Name string
	// PublicObjectsProtectedAtRest: the token stores the attribute values
	// of public objects (CKA_PRIVATE=false) encrypted, so that a copy of its
	// storage without a PIN does not give a public secret key's CKA_VALUE.
	// SoftHSM 2 encrypts only private objects (P11Attributes.cpp,
	// "if (isPrivate)"; TOKEN-FACTS): a public AES KEK, which every
	// SO-trusted AES key is (the SO cannot create private objects), is in
	// clear in its token directory. Unknown tokens are assumed not to.
	PublicObjectsProtectedAtRest bool
}

// profiles is the table of known tokens, by manufacturer prefix.
var profiles = []struct {
	manufacturer string
	profile      Profile
}{
	{"SoftHSM", Profile{Name: "SoftHSM 2", PublicObjectsProtectedAtRest: false}},
}

// ProfileFor returns the profile of a token by its identity.
func ProfileFor(manufacturer, model string) Profile {
	for _, p := range profiles {
		if strings.HasPrefix(strings.TrimSpace(manufacturer), p.manufacturer) {
			return p.profile
		}
	}
	return Profile{Name: "unknown (" + strings.TrimSpace(manufacturer) + " " + strings.TrimSpace(model) + ")"}
}
