package provider

import (
	"fmt"
	"slices"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// TokenProfile is what hsmkeys knows of the kind of token it talks to,
// where tokens differ: the one place the rest of hsmkeys asks instead of
// assuming SoftHSM (docs/tokens.md). Open fills it by the token's identity
// (manufacturer and model) and then by probing what can be tried: the
// mechanism list, C_GetInfo's Cryptoki version, a throw-away AES-GCM
// encryption (who makes the IV), a multi-part one, and a tampered
// decryption (which code means a bad tag). What is not known is assumed the
// unsafe or the portable way.
type TokenProfile struct {
	Name string // "SoftHSM 2", or "unknown (manufacturer model)"
	// Probed names the fields Open found by trying; the others come from
	// the identity table.
	Probed []string
	// PublicObjectsProtectedAtRest: the token stores public objects'
	// attribute values encrypted at rest. False on SoftHSM 2 (it encrypts
	// private objects only) and on tokens hsmkeys does not know. Where it
	// is false, every SO-made AES KEK (the SO can only create public
	// objects) sits in clear in the token's storage, so hsmkeys makes RSA
	// KEKs by default and an AES KEK only when asked to
	// (KEKOptions.AllowExposedAtRest).
	PublicObjectsProtectedAtRest bool
	// GCMIV says who makes the IV of an AES-GCM encryption: "caller",
	// "token, written into the gcm parameters" (CloudHSM) or "token,
	// appended to the output". hsmkeys stores whichever IV was used.
	GCMIV string
	// MaxCall is the largest input of one encryption or decryption call
	// (0: no known limit); streams use parts no larger.
	MaxCall int
	// MultiPartGCM: the token streams AES-GCM (C_EncryptUpdate). Without
	// it, and where the IV comes only with the output, Encrypt and
	// NewEncrypter hold the whole message in memory (up to MaxSealSize).
	MultiPartGCM bool
	// BadTag names the codes that mean "tag mismatch" in an AES-GCM
	// decryption; any other failure, CKR_GENERAL_ERROR included unless
	// listed, is a token failure, not ErrAuthentication.
	BadTag []string
	// KW: RFC 3394 key wrap offered. KWP: the RFC 5649 mechanism's name
	// and number ("CKM_AES_KEY_WRAP_PAD (0x210A)", "CKM_AES_KEY_WRAP_KWP
	// (0x210B)", or "" when not offered).
	KW  bool
	KWP string
	// OAEP: RSA-OAEP offered; OAEPHashes the hashes it is tried with,
	// strongest first.
	OAEP       bool
	OAEPHashes []string
	// UnwrapValueLen: CKA_VALUE_LEN goes into unwrap templates.
	UnwrapValueLen bool
	// Cryptoki is the version C_GetInfo reports, e.g. "2.40".
	Cryptoki string
	// V240Attrs: the token takes v2.40 attributes (CKA_COPYABLE).
	V240Attrs bool

	p *p11.Profile
}

func profileOf(t TokenInfo, pp *p11.Profile) TokenProfile {
	if pp == nil {
		d := p11.ProfileFor(t.Manufacturer, t.Model)
		pp = &d
	}
	tp := TokenProfile{
		Name: pp.Name, Probed: slices.Clone(pp.Probed), PublicObjectsProtectedAtRest: pp.PublicObjectsProtectedAtRest,
		GCMIV: pp.GCMIV.String(), MaxCall: pp.MaxCall, MultiPartGCM: pp.MultiPartGCM,
		KW: pp.KW, OAEP: pp.OAEP, UnwrapValueLen: pp.UnwrapValueLen, V240Attrs: pp.V240Attrs, p: pp,
	}
	for _, c := range pp.BadTag {
		tp.BadTag = append(tp.BadTag, p11.CodeName(c))
	}
	switch pp.KWP {
	case pkcs11.CKM_AES_KEY_WRAP_PAD:
		tp.KWP = "CKM_AES_KEY_WRAP_PAD (0x210A)"
	case p11.CKMAESKeyWrapKWP:
		tp.KWP = "CKM_AES_KEY_WRAP_KWP (0x210B)"
	}
	for _, h := range pp.OAEPHashes {
		switch h {
		case pkcs11.CKM_SHA_1:
			tp.OAEPHashes = append(tp.OAEPHashes, "sha1")
		case pkcs11.CKM_SHA256:
			tp.OAEPHashes = append(tp.OAEPHashes, "sha256")
		}
	}
	if pp.Cryptoki != [2]byte{} {
		tp.Cryptoki = fmt.Sprintf("%d.%d", pp.Cryptoki[0], pp.Cryptoki[1])
	}
	return tp
}

// Lines describes the profile, one "field: value" line each, for doctor.
func (t TokenProfile) Lines() []string {
	src := func(f string) string {
		if slices.Contains(t.Probed, f) {
			return " (probed)"
		}
		return " (by identity)"
	}
	maxCall := "no known limit"
	if t.MaxCall > 0 {
		maxCall = fmt.Sprintf("%d bytes", t.MaxCall)
	}
	kwp := t.KWP
	if kwp == "" {
		kwp = "not offered"
	}
	return []string{
		"gcm iv made by: " + t.GCMIV + src("GCMIV"),
		"largest single call: " + maxCall + " (by identity)",
		fmt.Sprintf("multi-part gcm: %v%s", t.MultiPartGCM, src("MultiPartGCM")),
		fmt.Sprintf("bad gcm tag reads as: %v%s", t.BadTag, src("BadTag")),
		fmt.Sprintf("aes key wrap (rfc 3394): %v; rfc 5649: %s%s", t.KW, kwp, src("Mechanisms")),
		fmt.Sprintf("rsa-oaep: %v%s, hashes %v (by identity)", t.OAEP, src("Mechanisms"), t.OAEPHashes),
		fmt.Sprintf("CKA_VALUE_LEN in unwrap templates: %v (by identity)", t.UnwrapValueLen),
		fmt.Sprintf("cryptoki %s, v2.40 attributes: %v%s", t.Cryptoki, t.V240Attrs, src("Cryptoki")),
		fmt.Sprintf("public objects protected at rest: %v (by identity)", t.PublicObjectsProtectedAtRest),
	}
}

// Profile is the profile of the token this provider opened.
func (p *Provider) Profile() TokenProfile {
	var pp *p11.Profile
	if p.pool != nil {
		pp = p.pool.Profile()
	}
	return profileOf(p.token, pp)
}

// Profile is the profile of the token this Admin manages, by its identity
// only (an Admin does not probe).
func (a *Admin) Profile() TokenProfile { return profileOf(a.token, nil) }

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

// probeProfile gives the pool its token's profile: by identity, then what
// the first session can try.
func (p *Provider) probeProfile(first *p11.Session) {
	base := p11.ProfileFor(p.token.Manufacturer, p.token.Model)
	prof := p.pool.Probe(first, base)
	p.pool.SetProfile(&prof)
}

// oneShotMax is the largest message Decrypt takes in one token call on
// this token: up to oneShotLimit where the streaming tag check can run,
// else (the token cannot re-encrypt under a message's nonce, or has no
// multi-part GCM) up to MaxSealSize, held in memory; never more than one
// call of the token takes.
func (p *Provider) oneShotMax() int64 {
	prof := p.pool.Profile()
	if prof == nil {
		return oneShotLimit
	}
	n := int64(oneShotLimit)
	if !prof.ReEncrypts() {
		n = MaxSealSize
	}
	if prof.MaxCall > 0 && int64(prof.MaxCall-p11.TagSize) < n && prof.ReEncrypts() {
		n = int64(prof.MaxCall - p11.TagSize)
	}
	return n
}

// partSize is the chunk size limited to the token's largest call.
func (p *Provider) partSize(n int) int {
	if prof := p.pool.Profile(); prof != nil && prof.MaxCall > 0 && n > prof.MaxCall {
		return prof.MaxCall
	}
	return n
}
