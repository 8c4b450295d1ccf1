package provider

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// ExportPolicy says whether session keys may leave the token, wrapped.
type ExportPolicy int

const (
	// ExportTrusted (the default): session keys are generated
	// CKA_EXTRACTABLE=true and CKA_WRAP_WITH_TRUSTED=true, so the token lets
	// them out only wrapped under a key the SO marked CKA_TRUSTED. Open
	// checks that the token enforces this and refuses to start otherwise.
	ExportTrusted ExportPolicy = iota
	// ExportNone: session keys are never extractable; Wrap refuses them.
	ExportNone
)

func (e ExportPolicy) String() string {
	switch e {
	case ExportTrusted:
		return "trusted"
	case ExportNone:
		return "none"
	}
	return fmt.Sprintf("ExportPolicy(%d)", int(e))
}

// ParseExportPolicy reads "trusted" or "none".
func ParseExportPolicy(s string) (ExportPolicy, error) {
	switch s {
	case "trusted":
		return ExportTrusted, nil
	case "none":
		return ExportNone, nil
	}
	return 0, fmt.Errorf("%w: export policy %q (want trusted or none)", ErrInvalidInput, s)
}

// KEKType is the kind and size of a key-encryption key.
type KEKType int

const (
	KEKAES128    KEKType = iota + 1 // AES-128 KEK, wrap and unwrap (RFC 3394)
	KEKAES256                       // AES-256 KEK, wrap and unwrap (RFC 3394)
	KEKRSA2048                      // RSA-2048 pair: trusted public half wraps (OAEP), private half unwraps
	KEKRSA3072                      // RSA-3072 pair
	KEKRSA4096                      // RSA-4096 pair
	KEKRSAPublic                    // another party's RSA public key: wrap only
)

var kekTypeNames = map[KEKType]string{
	KEKAES128: "aes128", KEKAES256: "aes256", KEKRSA2048: "rsa2048",
	KEKRSA3072: "rsa3072", KEKRSA4096: "rsa4096", KEKRSAPublic: "rsa-public",
}

func (t KEKType) String() string {
	if n, ok := kekTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("KEKType(%d)", int(t))
}

// ParseKEKType reads a KEK type name as String writes it.
func ParseKEKType(s string) (KEKType, error) {
	for t, n := range kekTypeNames {
		if n == s {
			return t, nil
		}
	}
	return 0, fmt.Errorf("%w: kek type %q (want aes128, aes256, rsa2048, rsa3072 or rsa4096)", ErrInvalidInput, s)
}

// IsRSA reports whether the KEK is an RSA key.
func (t KEKType) IsRSA() bool { return t >= KEKRSA2048 && t <= KEKRSAPublic }

func kekType(o p11.KEKObject) KEKType {
	switch o.Kind {
	case p11.KindAES:
		switch o.Bits {
		case 128:
			return KEKAES128
		case 256:
			return KEKAES256
		}
	case p11.KindRSA:
		switch o.Bits {
		case 2048:
			return KEKRSA2048
		case 3072:
			return KEKRSA3072
		case 4096:
			return KEKRSA4096
		}
	case p11.KindRSAPublic:
		return KEKRSAPublic
	}
	return 0
}

// KEK is a key-encryption key on the token, as found there. A KEK with
// Problems never wraps; one whose problems are all Outdated still unwraps,
// so that keys wrapped under it can be rewrapped under a new version.
type KEK struct {
	Label   string  // CKA_LABEL: the KEK's name
	ID      []byte  // CKA_ID: unique; identifies the version in exported keys
	Version int     // from the ID (hsmkeys IDs start with a 4-byte version); 0 if unknown
	Type    KEKType // 0 if not a type hsmkeys makes
	Bits    int     // key or modulus size
	Trusted bool    // the wrapping object is CKA_TRUSTED
	// TemplatesEnforced: the objects carry the CKA_WRAP_TEMPLATE and
	// CKA_UNWRAP_TEMPLATE hsmkeys requires (docs/security.md).
	TemplatesEnforced bool
	// Restricted: every half carries CKA_ALLOWED_MECHANISMS (RSA: OAEP
	// only; AES: key wrap only) and the full unwrap template. KEKs made by
	// hsmkeys before these existed are not, and cannot be changed.
	Restricted bool
	// Outdated: every problem is a missing restriction (see Restricted):
	// the KEK is refused for wrapping, and still unwraps so that keys can
	// be moved to a new version ('hsmkeys kek create' then 'key rewrap').
	Outdated bool
	// ExposedAtRest: the unwrapping half is a public object on a token
	// that stores public objects in clear (TokenProfile): a copy of the
	// token's storage, without any PIN, gives the KEK's value and so every
	// key and message wrapped under it. An AES KEK is so on SoftHSM; it
	// exists only by the administrator's explicit choice
	// (KEKOptions.AllowExposedAtRest).
	ExposedAtRest bool
	Problems      []string // attributes that break the policy; empty for a good KEK

	// mu guards obj: its object handles go stale when the token forgets
	// them (SoftHSM does when the last session of the slot closes), and
	// are then found again by ID.
	mu  sync.Mutex
	obj p11.KEKObject
}

// handles returns the KEK's current object handles.
func (k *KEK) handles() p11.KEKObject {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.obj
}

// refresh finds the KEK's objects again by CKA_ID on session s, after the
// token said a handle was no longer valid.
func (p *Provider) refreshKEK(s *p11.Session, k *KEK) error {
	objs, _, err := p.pool.FindKEKs(s, "", k.ID)
	if err != nil {
		return err
	}
	if len(objs) != 1 {
		return fmt.Errorf("%w: kek with id %s", ErrNotFound, hex.EncodeToString(k.ID))
	}
	k.mu.Lock()
	k.obj = objs[0]
	k.mu.Unlock()
	return nil
}

// withKEK runs fn with the KEK's handles and, if the token says the
// wrapping or unwrapping handle is stale (code), finds the KEK again and
// runs fn once more.
func (p *Provider) withKEK(s *p11.Session, k *KEK, stale uint, fn func(o p11.KEKObject) error) error {
	err := fn(k.handles())
	if code, _ := p11.CodeOf(err); code != stale {
		return err
	}
	if rerr := p.refreshKEK(s, k); rerr != nil {
		// The handle was stale and the token failed to answer again: its
		// failure is the one to report.
		return fmt.Errorf("finding %v again: %w", k, rerr)
	}
	return fn(k.handles())
}

func (k *KEK) String() string {
	return fmt.Sprintf("kek %q v%d (%v, id %s)", k.Label, k.Version, k.Type, hex.EncodeToString(k.ID))
}

// CanUnwrap reports whether this token holds the unwrapping half.
func (k *KEK) CanUnwrap() bool { return k.handles().Unwrap != 0 }

// PublicKey returns an RSA KEK's public key; nil for an AES KEK.
func (k *KEK) PublicKey() *rsa.PublicKey {
	o := k.handles()
	if len(o.Modulus) == 0 {
		return nil
	}
	e := new(big.Int).SetBytes(o.Exponent)
	if !e.IsInt64() || e.Int64() > 1<<31-1 {
		return nil
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(o.Modulus), E: int(e.Int64())}
}

func newKEK(o p11.KEKObject, problems []p11.Problem, prof TokenProfile) *KEK {
	k := &KEK{
		Label:   o.Label,
		ID:      bytes.Clone(o.ID),
		Version: int(p11.KEKVersion(o.ID)),
		Type:    kekType(o),
		Bits:    o.Bits,
		obj:     o,
	}
	hard, outdated := 0, 0
	for _, p := range problems {
		k.Problems = append(k.Problems, p.Text)
		if p.Outdated {
			outdated++
		} else {
			hard++
		}
	}
	k.Trusted = !slices.ContainsFunc(k.Problems, func(p string) bool { return strings.Contains(p, "CKA_TRUSTED") }) && o.Wrap != 0
	k.TemplatesEnforced = !slices.ContainsFunc(k.Problems, func(p string) bool { return strings.Contains(p, "_TEMPLATE") })
	k.Restricted = outdated == 0 && !slices.ContainsFunc(k.Problems, func(p string) bool { return strings.Contains(p, "CKA_ALLOWED_MECHANISMS") })
	k.Outdated = outdated > 0 && hard == 0
	k.ExposedAtRest = o.Kind == p11.KindAES && !prof.PublicObjectsProtectedAtRest
	if k.Type == 0 {
		k.Problems = append(k.Problems, fmt.Sprintf("unsupported key size %d", o.Bits))
		k.Outdated = false
	}
	return k
}

// usable returns an error naming the KEK's problems, if any: the test
// before a KEK wraps.
func (k *KEK) usable() error {
	if len(k.Problems) == 0 {
		return nil
	}
	if k.Outdated && k.Type == KEKRSAPublic {
		return fmt.Errorf("%w: %v refused: %s; it cannot be changed (not modifiable): import the public key again as a new version (hsmkeys kek import-public --label %s --pem FILE)",
			ErrPolicy, k, strings.Join(k.Problems, "; "), k.Label)
	}
	if k.Outdated {
		return fmt.Errorf("%w: %v refused: %s; it cannot be changed (not modifiable): create a new version (hsmkeys kek create --label %s) and rewrap the keys and messages under it (hsmkeys key rewrap)",
			ErrPolicy, k, strings.Join(k.Problems, "; "), k.Label)
	}
	return fmt.Errorf("%w: %v refused: %s", ErrPolicy, k, strings.Join(k.Problems, "; "))
}

// unwrappable is usable for unwrapping: an Outdated KEK still unwraps, so
// that what was wrapped under it can be rewrapped.
func (k *KEK) unwrappable() error {
	if k.Outdated {
		return nil
	}
	return k.usable()
}

// sortKEKs orders by label, then version, newest last.
func sortKEKs(ks []*KEK) {
	slices.SortStableFunc(ks, func(a, b *KEK) int {
		if c := strings.Compare(a.Label, b.Label); c != 0 {
			return c
		}
		return a.Version - b.Version
	})
}

// kekCache keeps KEKs found on the token by ID, so that export and import do
// not search the token every time. An entry is dropped when the token says
// its handles are no longer valid.
type kekCache struct {
	mu   sync.Mutex
	byID map[string]*KEK
}

func (c *kekCache) get(id []byte) *KEK {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byID[string(id)]
}

func (c *kekCache) put(k *KEK) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID == nil {
		c.byID = map[string]*KEK{}
	}
	c.byID[string(k.ID)] = k
}

// putAs files k under another key (such as a subject key identifier).
func (c *kekCache) putAs(key []byte, k *KEK) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID == nil {
		c.byID = map[string]*KEK{}
	}
	c.byID[string(key)] = k
}

func (c *kekCache) drop(id []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.byID, string(id))
}

// KEKs lists the KEKs on the token, with their problems. A KEK whose
// private half is missing is listed with CanUnwrap false. Objects that
// anyone could have planted (not trusted, not private, not matching) are
// never KEKs: see ForeignObjects.
func (p *Provider) KEKs(ctx context.Context) ([]*KEK, error) {
	ks, _, err := p.findKEKs(ctx, "", nil)
	return ks, err
}

// ForeignObject is a token object that shares a KEK's label or ID, or
// looks like a KEK half, but is not one that only the SO or a user could
// have made. hsmkeys ignores it: it never joins a KEK, and no KEK command
// uses or destroys it.
type ForeignObject struct {
	Label string
	ID    []byte
	Class string // "secret key", "public key", "private key"
	Why   string
}

// ForeignObjects lists the foreign objects on the token.
func (p *Provider) ForeignObjects(ctx context.Context) ([]ForeignObject, error) {
	_, fs, err := p.findKEKs(ctx, "", nil)
	return fs, err
}

func foreignObjects(fs []p11.ForeignObject) []ForeignObject {
	out := make([]ForeignObject, len(fs))
	for i, f := range fs {
		class := map[uint]string{pkcs11.CKO_SECRET_KEY: "secret key", pkcs11.CKO_PUBLIC_KEY: "public key", pkcs11.CKO_PRIVATE_KEY: "private key"}[f.Class]
		out[i] = ForeignObject{Label: f.Label, ID: bytes.Clone(f.ID), Class: class, Why: f.Why}
	}
	return out
}

func (p *Provider) findKEKs(ctx context.Context, label string, id []byte) ([]*KEK, []ForeignObject, error) {
	if err := p.begin(); err != nil {
		return nil, nil, err
	}
	defer p.end()
	var out []*KEK
	var foreign []ForeignObject
	err := p.doRead(ctx, func(s *p11.Session) error {
		objs, fs, err := p.pool.FindKEKs(s, label, id)
		if err != nil {
			return err
		}
		out = out[:0]
		foreign = foreignObjects(fs)
		for _, o := range objs {
			problems, err := p.pool.KEKProblems(s, o)
			if err != nil {
				return err
			}
			out = append(out, newKEK(o, problems, p.Profile()))
		}
		return nil
	})
	if err != nil {
		return nil, nil, mapErr(err)
	}
	sortKEKs(out)
	return out, foreign, nil
}

// KEK returns the newest version of the KEK named name. If that version has
// problems it is refused, rather than an older one used silently. A name
// that starts with "pkcs11:" is an object URI, resolved by KEKByURI.
func (p *Provider) KEK(ctx context.Context, name string) (*KEK, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty kek name", ErrInvalidInput)
	}
	if isURI(name) {
		return p.KEKByURI(ctx, name)
	}
	ks, foreign, err := p.findKEKs(ctx, name, nil)
	if err != nil {
		return nil, err
	}
	if len(ks) == 0 {
		if len(foreign) > 0 {
			return nil, fmt.Errorf("%w: kek %q (%d foreign objects with that label ignored: %s)", ErrNotFound, name, len(foreign), foreign[0].Why)
		}
		return nil, fmt.Errorf("%w: kek %q", ErrNotFound, name)
	}
	k := ks[len(ks)-1]
	if err := k.usable(); err != nil {
		return nil, err
	}
	p.keks.put(k)
	return k, nil
}

// KEKByID returns the KEK with this CKA_ID: the exact version an exported
// key names.
func (p *Provider) KEKByID(ctx context.Context, id []byte) (*KEK, error) {
	if len(id) == 0 || len(id) > 256 {
		return nil, fmt.Errorf("%w: kek id of %d bytes", ErrInvalidInput, len(id))
	}
	if k := p.keks.get(id); k != nil {
		return k, nil
	}
	ks, _, err := p.findKEKs(ctx, "", id)
	if err != nil {
		return nil, err
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("%w: kek with id %s", ErrNotFound, hex.EncodeToString(id))
	}
	if len(ks) > 1 {
		return nil, fmt.Errorf("%w: %d keks share the id %s", ErrPolicy, len(ks), hex.EncodeToString(id))
	}
	k := ks[0]
	// Used to unwrap (Import, Decrypt, Unwrap); Wrap checks usable itself.
	if err := k.unwrappable(); err != nil {
		return nil, err
	}
	p.keks.put(k)
	return k, nil
}

// KEKByPublicKey returns the first RSA KEK whose public key match accepts
// (for example, by subject key identifier).
func (p *Provider) KEKByPublicKey(ctx context.Context, match func(*rsa.PublicKey) bool) (*KEK, error) {
	ks, err := p.KEKs(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range ks {
		if pub := k.PublicKey(); pub != nil && match(pub) {
			if err := k.unwrappable(); err != nil {
				return nil, err
			}
			p.keks.put(k)
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: no rsa kek with that public key", ErrNotFound)
}

// WrapMechanism is how a wrapped key was wrapped.
type WrapMechanism int

const (
	AESKeyWrap    WrapMechanism = iota + 1 // RFC 3394, CKM_AES_KEY_WRAP
	AESKeyWrapPad                          // RFC 5649, CKM_AES_KEY_WRAP_PAD (SoftHSM) or _KWP
	RSAOAEPSHA1                            // RSAES-OAEP, SHA-1 and MGF1-SHA-1 (RFC 8017)
	RSAOAEPSHA256                          // RSAES-OAEP, SHA-256 and MGF1-SHA-256
)

func (w WrapMechanism) String() string {
	switch w {
	case AESKeyWrap:
		return "aes-key-wrap"
	case AESKeyWrapPad:
		return "aes-key-wrap-pad"
	case RSAOAEPSHA1:
		return "rsa-oaep-sha1"
	case RSAOAEPSHA256:
		return "rsa-oaep-sha256"
	}
	return fmt.Sprintf("WrapMechanism(%d)", int(w))
}

func (w WrapMechanism) p11() (p11.WrapMech, error) {
	switch w {
	case AESKeyWrap:
		return p11.WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP}, nil
	case AESKeyWrapPad:
		return p11.WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, nil
	case RSAOAEPSHA1:
		return p11.WrapMech{Mech: pkcs11.CKM_RSA_PKCS_OAEP, Hash: pkcs11.CKM_SHA_1}, nil
	case RSAOAEPSHA256:
		return p11.WrapMech{Mech: pkcs11.CKM_RSA_PKCS_OAEP, Hash: pkcs11.CKM_SHA256}, nil
	}
	return p11.WrapMech{}, fmt.Errorf("%w: wrap mechanism %v", ErrUnsupported, w)
}

func (w WrapMechanism) isRSA() bool { return w == RSAOAEPSHA1 || w == RSAOAEPSHA256 }

// WrappedKey is a session key wrapped under a KEK: the raw output of
// C_WrapKey and what is needed to unwrap it. The format of exported keys
// builds on it. Wrap, Unwrap and this type are the low-level layer, for
// systems that want raw wrapped keys; Export and Import are the normal way
// (see the package doc, Which call for which job).
type WrappedKey struct {
	KEKID     []byte        // the CKA_ID of the KEK version
	Mechanism WrapMechanism // how it was wrapped
	Algorithm Algorithm     // what the key is
	Bytes     []byte        // the wrapped key
}

// Wrap wraps the session key k under kek, inside the token. The token
// itself refuses unless k was generated exportable (ExportTrusted) and kek
// is trusted. AES KEKs use RFC 3394 key wrap; RSA KEKs use OAEP with the
// strongest hash the token accepts (SoftHSM 2.6.1: SHA-1 only), recorded in
// the result.
func (p *Provider) Wrap(ctx context.Context, k *Key, kek *KEK) (*WrappedKey, error) {
	return p.WrapWith(ctx, k, kek, 0)
}

// WrapWith is Wrap with a chosen mechanism: AESKeyWrap or AESKeyWrapPad
// (RFC 5649: CKM_AES_KEY_WRAP_PAD, or CKM_AES_KEY_WRAP_KWP on tokens that
// name it so) for an AES KEK, RSAOAEPSHA1 or RSAOAEPSHA256 for an RSA KEK;
// 0 chooses as Wrap does.
func (p *Provider) WrapWith(ctx context.Context, k *Key, kek *KEK, m WrapMechanism) (*WrappedKey, error) {
	if kek == nil {
		return nil, fmt.Errorf("wrap: %w: nil kek", ErrInvalidInput)
	}
	if err := kek.usable(); err != nil {
		return nil, fmt.Errorf("wrap: %w", err)
	}
	if k != nil && !k.exportable {
		return nil, fmt.Errorf("wrap: %w: %v was generated under export policy none", ErrPolicy, k)
	}
	if m != 0 {
		if _, err := m.p11(); err != nil {
			return nil, fmt.Errorf("wrap: %w", err)
		}
		if m.isRSA() != kek.Type.IsRSA() {
			return nil, fmt.Errorf("wrap: %w: %v cannot wrap with %v", ErrInvalidInput, kek, m)
		}
	}
	var out *WrappedKey
	err := k.use(ctx, "wrap", func(s *p11.Session) error {
		w, err := p.wrapWith(s, k.obj, k.alg, kek, m)
		out = w
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// wrapOn wraps obj under kek on session s, choosing the mechanism.
func (p *Provider) wrapOn(s *p11.Session, obj p11.Object, alg Algorithm, kek *KEK) (*WrappedKey, error) {
	return p.wrapWith(s, obj, alg, kek, 0)
}

// wrapWith wraps obj under kek with m, or (m == 0) RFC 3394 for an AES KEK
// and the best OAEP the token takes for an RSA one.
func (p *Provider) wrapWith(s *p11.Session, obj p11.Object, alg Algorithm, kek *KEK, m WrapMechanism) (*WrappedKey, error) {
	mechs := []WrapMechanism{AESKeyWrap}
	switch {
	case m != 0:
		mechs = []WrapMechanism{m}
	case kek.Type.IsRSA():
		mechs = p.oaepOrder()
	}
	var last error
	for _, m := range mechs {
		pm, _ := m.p11()
		var b []byte
		err := p.withKEK(s, kek, pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, func(o p11.KEKObject) error {
			var err error
			b, err = p.pool.Wrap(s, pm, o.Wrap, obj)
			return err
		})
		if err == nil {
			if m.isRSA() {
				p.oaepWorks(m)
			}
			return &WrappedKey{KEKID: bytes.Clone(kek.ID), Mechanism: m, Algorithm: alg, Bytes: b}, nil
		}
		last = err
		code, _ := p11.CodeOf(err)
		if !m.isRSA() || (code != pkcs11.CKR_ARGUMENTS_BAD && code != pkcs11.CKR_MECHANISM_PARAM_INVALID && code != pkcs11.CKR_MECHANISM_INVALID) {
			break
		}
	}
	return nil, kekErr(last)
}

// oaepOrder is the OAEP hashes to try: the one that worked last, or those
// the token's profile lists, strongest first (SoftHSM: SHA-1 only;
// unknown tokens: SHA-256 then SHA-1).
func (p *Provider) oaepOrder() []WrapMechanism {
	p.oaepMu.Lock()
	defer p.oaepMu.Unlock()
	if p.oaep != 0 {
		return []WrapMechanism{p.oaep}
	}
	var out []WrapMechanism
	if prof := p.pool.Profile(); prof != nil {
		for _, h := range prof.OAEPHashes {
			switch h {
			case pkcs11.CKM_SHA256:
				out = append(out, RSAOAEPSHA256)
			case pkcs11.CKM_SHA_1:
				out = append(out, RSAOAEPSHA1)
			}
		}
	}
	if len(out) == 0 {
		out = []WrapMechanism{RSAOAEPSHA256, RSAOAEPSHA1}
	}
	return out
}

func (p *Provider) oaepWorks(m WrapMechanism) {
	p.oaepMu.Lock()
	p.oaep = m
	p.oaepMu.Unlock()
}

// kekErr explains the token's refusals to wrap.
func kekErr(err error) error {
	code, _ := p11.CodeOf(err)
	switch code {
	case pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_KEY_UNEXTRACTABLE:
		return fmt.Errorf("%w: the token refused to wrap this key under this kek: %w", ErrPolicy, err)
	}
	return err
}

// Unwrap brings a wrapped key back into the token as a session key, under
// the KEK version its KEKID names. The key comes back private, sensitive and
// exportable only under trusted keys, whatever the caller asks: the KEK's
// CKA_UNWRAP_TEMPLATE forces it. A blob that fails its integrity check, or
// was wrapped under another key, gives ErrWrappedKeyInvalid.
func (p *Provider) Unwrap(ctx context.Context, w *WrappedKey) (*Key, error) {
	if err := validWrapped(w); err != nil {
		return nil, fmt.Errorf("unwrap: %w", err)
	}
	kek, err := p.KEKByID(ctx, w.KEKID)
	if err != nil {
		return nil, fmt.Errorf("unwrap: %w", err)
	}
	return p.unwrapUnder(ctx, w, kek)
}

func validWrapped(w *WrappedKey) error {
	if w == nil {
		return fmt.Errorf("%w: nil wrapped key", ErrInvalidInput)
	}
	if len(w.Bytes) == 0 || len(w.Bytes) > p11.MaxWrapped {
		return fmt.Errorf("%w: wrapped key of %d bytes", ErrWrappedKeyInvalid, len(w.Bytes))
	}
	if w.Algorithm.bytes() == 0 {
		return fmt.Errorf("%w: algorithm %v", ErrUnsupported, w.Algorithm)
	}
	if _, err := w.Mechanism.p11(); err != nil {
		return err
	}
	return nil
}

// unwrapUnder unwraps w under kek into a new session key.
func (p *Provider) unwrapUnder(ctx context.Context, w *WrappedKey, kek *KEK) (*Key, error) {
	if !kek.CanUnwrap() {
		return nil, fmt.Errorf("unwrap: %w: %v has no unwrapping half on this token", ErrNotFound, kek)
	}
	if w.Mechanism.isRSA() != kek.Type.IsRSA() {
		return nil, fmt.Errorf("unwrap: %w: %v cannot unwrap a %v key", ErrWrappedKeyInvalid, kek, w.Mechanism)
	}
	if err := p.begin(); err != nil {
		return nil, err
	}
	defer p.end()
	pm, _ := w.Mechanism.p11()
	k := &Key{p: p, alg: w.Algorithm, exportable: true}
	kind := unwrapKind{string(kek.ID), w.Mechanism, w.Algorithm}
	verify := p.mustCheck(kind)
	err := p.do(ctx, func(s *p11.Session) error {
		var obj p11.Object
		err := p.withKEK(s, kek, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID, func(o p11.KEKObject) error {
			var err error
			obj, err = p.pool.UnwrapChecked(s, pm, o.Unwrap, w.Bytes, w.Algorithm.bytes(), verify)
			return err
		})
		if err != nil {
			return err
		}
		k.obj, k.owner = obj, s
		return nil
	})
	if err != nil {
		if code, _ := p11.CodeOf(err); code == pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID || code == pkcs11.CKR_KEY_HANDLE_INVALID {
			p.keks.drop(kek.ID)
		}
		if errors.Is(err, p11.ErrWrappedKeyInvalid) {
			return nil, fmt.Errorf("unwrap: %w: %w", ErrWrappedKeyInvalid, err)
		}
		return nil, fmt.Errorf("unwrap: %w", mapErr(err))
	}
	if verify {
		p.checked.Store(kind, true)
	}
	p.register(k)
	return k, nil
}

// RewrapKey unwraps w into the token and wraps it under to, then destroys the
// temporary session key: the key never exists outside the token.
func (p *Provider) RewrapKey(ctx context.Context, w *WrappedKey, to *KEK) (*WrappedKey, error) {
	if to == nil {
		return nil, fmt.Errorf("rewrap: %w: nil kek", ErrInvalidInput)
	}
	if err := to.usable(); err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	k, err := p.Unwrap(ctx, w)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	out, err := p.Wrap(ctx, k, to)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	return out, nil
}
