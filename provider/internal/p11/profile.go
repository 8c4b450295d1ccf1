package p11

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// IVSource says who makes the AES-GCM IV of an encryption and where it
// comes back (PKCS#11 v2.40 mechanisms §2.12.3 leaves it to the token;
// v3.0 §2.12.3 adds the generator flags for exactly this reason).
type IVSource int

const (
	// IVCaller: the token uses the caller's CK_GCM_PARAMS.pIv (SoftHSM,
	// NSS softoken).
	IVCaller IVSource = iota
	// IVInParams: the token ignores the caller's IV, makes its own and
	// writes it into CK_GCM_PARAMS.pIv (AWS CloudHSM, documented).
	IVInParams
	// IVAppended: the token makes its own IV and returns it after the
	// ciphertext and tag of C_Encrypt or C_EncryptFinal: ct || tag || iv
	// (the layout hsmkeys simulates for Luna in FIPS mode; a real Luna's
	// layout was read in no document here and may differ).
	IVAppended
	// IVUnsupported: the token answered the probe encryption in a layout
	// hsmkeys does not take (a 16-byte IV appended, as Luna firmware
	// before 7.9.3 in FIPS mode documents; anything else): its AES-GCM
	// encryption is refused with ErrTokenIV rather than misread.
	IVUnsupported
)

func (s IVSource) String() string {
	switch s {
	case IVCaller:
		return "caller"
	case IVInParams:
		return "token, written into the gcm parameters"
	case IVAppended:
		return "token, appended to the output"
	case IVUnsupported:
		return "token, in a layout hsmkeys does not take"
	}
	return fmt.Sprintf("IVSource(%d)", int(s))
}

// Profile holds what differs between tokens: the one place hsmkeys asks
// instead of assuming SoftHSM. ProfileFor gives what is known by identity
// (C_GetTokenInfo manufacturer and model); Pool.Probe then replaces what can
// be found out by trying (mechanism list, C_GetInfo, a throw-away GCM
// encryption, a multi-part GCM encryption, a tampered decryption). What is
// not known is assumed the unsafe or the portable way.
type Profile struct {
	// Name names the profile ("SoftHSM 2", "unknown (vendor model)").
	Name string
	// Probed lists the fields Probe established by trying.
	Probed []string
	// PublicObjectsProtectedAtRest: the token stores the attribute values
	// of public objects (CKA_PRIVATE=false) encrypted, so that a copy of its
	// storage without a PIN does not give a public secret key's CKA_VALUE.
	// SoftHSM 2 encrypts only private objects (P11Attributes.cpp,
	// "if (isPrivate)"; TOKEN-FACTS): a public AES KEK, which every
	// SO-trusted AES key is (the SO cannot create private objects), is in
	// clear in its token directory. Unknown tokens are assumed not to.
	// Identity only.
	PublicObjectsProtectedAtRest bool
	// GCMIV: who makes the GCM IV of an encryption. Probed.
	GCMIV IVSource
	// MaxCall is the largest input of one C_Encrypt, C_Decrypt or
	// C_*Update (0: no known limit). CloudHSM documents about 16 KiB for
	// AES-GCM. Identity only: a limit cannot be found without hitting it.
	MaxCall int
	// MultiPartGCM: C_EncryptUpdate works under CKM_AES_GCM (NSS softoken:
	// single-part only). Probed.
	MultiPartGCM bool
	// BadTag lists the codes of C_Decrypt under AES-GCM that mean "the tag
	// does not match". SoftHSM answers CKR_GENERAL_ERROR (TOKEN-FACTS),
	// which on other tokens is a device failure and must not read as
	// "not authentic"; the standard answer is CKR_ENCRYPTED_DATA_INVALID
	// (v2.40 mechanisms §2.12.3). Probed with a tampered tag.
	BadTag []uint
	// KW is CKM_AES_KEY_WRAP (RFC 3394) offered. Probed.
	KW bool
	// KWP is the mechanism number of RFC 5649 wrap: CKM_AES_KEY_WRAP_PAD
	// (0x210A, SoftHSM, v2.40 drafts) or CKM_AES_KEY_WRAP_KWP (0x210B,
	// v3.0 §2.15.4); 0 when neither is offered. Probed.
	KWP uint
	// OAEP is CKM_RSA_PKCS_OAEP offered (probed); OAEPHashes the hashes
	// the token takes with it, strongest first (identity; SoftHSM: SHA-1
	// only).
	OAEP       bool
	OAEPHashes []uint
	// UnwrapValueLen: CKA_VALUE_LEN belongs in unwrap templates (Luna
	// wants it; SoftHSM refuses it with CKR_ATTRIBUTE_READ_ONLY,
	// TOKEN-FACTS). Identity only.
	UnwrapValueLen bool
	// Cryptoki is C_GetInfo's cryptokiVersion (major, minor). Probed.
	Cryptoki [2]byte
	// V240Attrs: the token takes attributes new in v2.40 (CKA_COPYABLE;
	// CKA_WRAP_WITH_TRUSTED came with v2.20 amendments and is refused by
	// plain 2.20 tokens). False for a token reporting Cryptoki below 2.40:
	// such attributes are left out of templates, and the trusted-only
	// export policy cannot hold there.
	V240Attrs bool
	// Mechanisms is the token's mechanism list. Probed.
	Mechanisms []uint
}

// StreamsGCM reports whether a GCM encryption can be streamed through
// C_EncryptUpdate with the IV known before the first part: the token
// allows multi-part GCM and does not hand its IV back only at the end.
func (p *Profile) StreamsGCM() bool {
	return p.MultiPartGCM && p.GCMIV != IVAppended
}

// ReEncrypts reports whether a GCM encryption with a chosen IV is possible,
// which the streaming tag check of a large message needs (it recomputes the
// tag by encrypting again under the message's own nonce).
func (p *Profile) ReEncrypts() bool { return p.GCMIV == IVCaller && p.MultiPartGCM }

// IsBadTag reports whether code, from a GCM C_Decrypt, means "tag mismatch".
func (p *Profile) IsBadTag(code uint) bool { return slices.Contains(p.BadTag, code) }

// standardBadTag are the codes v2.40 names for a failed GCM decryption.
var standardBadTag = []uint{pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE}

// identities is the table of known tokens. A token matches the first
// entry one of whose words occurs, case-insensitively, in its manufacturer
// or model. Entries marked "(docs)" are read in vendor documentation,
// not measured here (docs/tokens.md).
var identities = []struct {
	words []string
	prof  Profile
}{
	// Measured (TOKEN-FACTS).
	{[]string{"softhsm"}, Profile{Name: "SoftHSM 2", BadTag: []uint{pkcs11.CKR_GENERAL_ERROR},
		OAEPHashes: []uint{pkcs11.CKM_SHA_1}}},
	{[]string{"mozilla", "nss"}, Profile{Name: "NSS softoken"}},
	{[]string{"opencryptoki", "ibm"}, Profile{Name: "openCryptoki"}},
	{[]string{"tpm2", "tpm"}, Profile{Name: "tpm2-pkcs11"}},
	// (docs)
	{[]string{"cloudhsm"}, Profile{Name: "AWS CloudHSM", MaxCall: 16 << 10, GCMIV: IVInParams}},
	{[]string{"luna", "safenet"}, Profile{Name: "Thales Luna", UnwrapValueLen: true, GCMIV: IVAppended}},
	{[]string{"nshield", "ncipher", "entrust"}, Profile{Name: "Entrust nShield"}},
	{[]string{"yubihsm", "yubico"}, Profile{Name: "YubiHSM 2"}},
}

// ProfileFor returns the profile of a token by its identity alone.
func ProfileFor(manufacturer, model string) Profile {
	manufacturer, model = strings.TrimSpace(manufacturer), strings.TrimSpace(model)
	id := strings.ToLower(manufacturer + " " + model)
	for _, e := range identities {
		for _, w := range e.words {
			if strings.Contains(id, w) {
				p := e.prof
				p.BadTag = append(slices.Clone(p.BadTag), standardBadTag...)
				if len(p.OAEPHashes) == 0 {
					p.OAEPHashes = []uint{pkcs11.CKM_SHA256, pkcs11.CKM_SHA_1}
				}
				p.MultiPartGCM, p.KW, p.KWP, p.V240Attrs = true, true, pkcs11.CKM_AES_KEY_WRAP_PAD, true
				return p
			}
		}
	}
	return Profile{Name: "unknown (" + strings.TrimSpace(manufacturer+" "+model) + ")",
		BadTag: slices.Clone(standardBadTag), MultiPartGCM: true, KW: true, KWP: pkcs11.CKM_AES_KEY_WRAP_PAD,
		OAEPHashes: []uint{pkcs11.CKM_SHA256, pkcs11.CKM_SHA_1}, V240Attrs: true}
}

// ErrBadTag marks a GCM decryption whose tag did not match, by the codes
// of the token's profile; it wraps the token's *Error.
var ErrBadTag = errors.New("gcm tag mismatch")

// Profile is the profile the pool's token was given (ProfileFor, then
// Probe). Nil until SetProfile.
func (p *Pool) Profile() *Profile { return p.prof }

// SetProfile gives the pool its token's profile; call before any operation.
func (p *Pool) SetProfile(prof *Profile) { p.prof = prof }

// profile is the pool's profile, or SoftHSM-compatible defaults.
func (p *Pool) profile() *Profile {
	if p.prof != nil {
		return p.prof
	}
	d := ProfileFor("", "")
	return &d
}

// Probe finds out what it can of the token by trying, on session s, and
// returns base with those fields replaced (PKCS#11 v2.40 §5.4 C_GetInfo,
// §5.5 C_GetMechanismList; the GCM tries use a throw-away session key that
// is destroyed at once). A probe that fails leaves base's value.
func (p *Pool) Probe(s *Session, base Profile) Profile {
	prof := base
	prof.BadTag = slices.Clone(base.BadTag)
	probed := func(f string) { prof.Probed = append(prof.Probed, f) }
	if info, err := p.ctx().GetInfo(); err == nil {
		prof.Cryptoki = [2]byte{info.CryptokiVersion.Major, info.CryptokiVersion.Minor}
		prof.V240Attrs = info.CryptokiVersion.Major > 2 || (info.CryptokiVersion.Major == 2 && info.CryptokiVersion.Minor >= 40)
		probed("Cryptoki")
	}
	if ms, err := p.mod.Mechanisms(p.slot); err == nil {
		prof.Mechanisms = ms
		prof.KW = slices.Contains(ms, pkcs11.CKM_AES_KEY_WRAP)
		switch {
		case slices.Contains(ms, pkcs11.CKM_AES_KEY_WRAP_PAD):
			prof.KWP = pkcs11.CKM_AES_KEY_WRAP_PAD
		case slices.Contains(ms, CKMAESKeyWrapKWP):
			prof.KWP = CKMAESKeyWrapKWP
		default:
			prof.KWP = 0
		}
		prof.OAEP = slices.Contains(ms, pkcs11.CKM_RSA_PKCS_OAEP)
		probed("Mechanisms")
		if !slices.Contains(ms, pkcs11.CKM_AES_GCM) || !slices.Contains(ms, pkcs11.CKM_AES_KEY_GEN) {
			prof.MultiPartGCM = false
			probed("MultiPartGCM")
			return prof
		}
	}
	key, err := p.probeKey(s, prof.V240Attrs)
	if err != nil {
		return prof
	}
	defer p.ctx().DestroyObject(s.h, key)
	p.probeGCM(s, key, &prof, probed)
	return prof
}

// probeKey makes a throw-away AES-128 session key for the GCM probes,
// with attributes every Cryptoki version knows.
func (p *Pool) probeKey(s *Session, v240 bool) (pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 16),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	}
	return p.ctx().GenerateKey(s.h, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
}

// probeGCM encrypts 16 bytes under a chosen IV and sees where the IV used
// comes back, decrypts with a flipped tag bit to learn the bad-tag code,
// and tries a multi-part encryption.
func (p *Pool) probeGCM(s *Session, key pkcs11.ObjectHandle, prof *Profile, probed func(string)) {
	chosen := []byte("hsmkeys-prob")
	pt := make([]byte, 16)
	mech, params := gcmMech(slices.Clone(chosen), nil)
	defer params.Free()
	if err := p.ctx().EncryptInit(s.h, mech, key); err != nil {
		return
	}
	out, err := p.mod.raw.Encrypt(uint(s.h), pt, len(pt)+TagSize+NonceSize)
	if err != nil {
		return
	}
	iv := params.IV()
	switch {
	case len(out) == len(pt)+TagSize+NonceSize:
		prof.GCMIV = IVAppended
		iv, out = out[len(out)-NonceSize:], out[:len(out)-NonceSize]
	case len(out) == len(pt)+TagSize && len(iv) == NonceSize && string(iv) != string(chosen):
		prof.GCMIV = IVInParams
	case len(out) == len(pt)+TagSize:
		prof.GCMIV = IVCaller
		iv = chosen
	default:
		prof.GCMIV = IVUnsupported
		probed("GCMIV")
		return
	}
	probed("GCMIV")
	out[len(out)-1] ^= 1
	dm, dparams := gcmMech(iv, nil)
	defer dparams.Free()
	if err := p.ctx().DecryptInit(s.h, dm, key); err == nil {
		_, err := p.mod.raw.Decrypt(uint(s.h), out, len(out))
		if code, ok := CodeOf(err); ok && code != pkcs11.CKR_OK {
			prof.BadTag = append(prof.BadTag[:0], code)
			for _, c := range standardBadTag {
				if c != code {
					prof.BadTag = append(prof.BadTag, c)
				}
			}
			probed("BadTag")
		}
	}
	mm, mparams := gcmMech(slices.Clone(chosen), nil)
	defer mparams.Free()
	if err := p.ctx().EncryptInit(s.h, mm, key); err != nil {
		return
	}
	_, err = p.ctx().EncryptUpdate(s.h, pt)
	if err != nil {
		prof.MultiPartGCM = false
		probed("MultiPartGCM")
		// A failed update ends the operation (v2.40 §5.2), but
		// NSS softoken 3.87 answers CKR_OPERATION_NOT_INITIALIZED and
		// keeps the single-part operation going (measured): end it with
		// the single-part call, which answers the same code where the
		// operation did end.
		_, _ = p.mod.raw.Encrypt(uint(s.h), pt, len(pt)+TagSize+NonceSize)
		return
	}
	_, err = p.ctx().EncryptFinal(s.h)
	prof.MultiPartGCM = err == nil
	probed("MultiPartGCM")
}
