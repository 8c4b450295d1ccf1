package p11

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Key-encryption keys (KEKs). The design follows what SoftHSM 2.6.1 was
// measured to enforce (TOKEN-FACTS and ckraw's tests):
//
//   - Only the SO can set CKA_TRUSTED, only in the creating template, and
//     the SO's objects are public (PKCS#11 v2.40 §4.9, CKA_TRUSTED).
//   - A public key that can unwrap would let anyone with no PIN unwrap a
//     blob as a non-sensitive key. CKA_UNWRAP_TEMPLATE (§4.9, "wrap and
//     unwrap templates") forces every unwrapped key to come back a private,
//     sensitive session key; a private object cannot be created without a
//     login, so a PIN-less caller gets nothing.
//   - CKA_WRAP_TEMPLATE restricts what the KEK wraps to keys with
//     CKA_WRAP_WITH_TRUSTED=true.
//   - CKA_MODIFIABLE=false and CKA_COPYABLE=false (§4.4): on a modifiable
//     public KEK a session with no login can set CKA_DECRYPT and undo the
//     key wrap block by block (ckraw TestModifiableKEK).
//   - No KEK can encrypt, decrypt, sign or derive.

// KEKKind is the shape of a KEK on the token.
type KEKKind int

const (
	// KindAES: one AES secret key, trusted, wrap and unwrap.
	KindAES KEKKind = iota + 1
	// KindRSA: a private RSA key (private, unwrap only) and its public half
	// recreated trusted by the SO (wrap only), sharing a CKA_ID.
	KindRSA
	// KindRSAPublic: another party's RSA public key, trusted, wrap only.
	KindRSAPublic
)

// KEKObject is a KEK as found on the token.
type KEKObject struct {
	Kind     KEKKind
	Label    string
	ID       []byte
	Bits     int    // AES key or RSA modulus size
	Wrap     Object // the object that wraps: the AES key or the trusted public key
	Unwrap   Object // the object that unwraps: the AES key or the private key; 0 if none
	Modulus  []byte // RSA only
	Exponent []byte // RSA only
	// Duplicate: another trusted object (or private half) has this CKA_ID;
	// only the SO (or a user) could have made it. The first one found is
	// Wrap (Unwrap); the KEK is refused.
	Duplicate bool
}

// KEKIDSize is the size of the CKA_ID hsmkeys gives a KEK: a 4-byte
// big-endian version then 12 random bytes, so versions of one name sort and
// every ID is unique.
const KEKIDSize = 16

// NewKEKID returns a fresh CKA_ID for version v.
func NewKEKID(v uint32) ([]byte, error) {
	id := make([]byte, KEKIDSize)
	binary.BigEndian.PutUint32(id, v)
	if _, err := rand.Read(id[4:]); err != nil {
		return nil, err
	}
	return id, nil
}

// KEKVersion reads the version from an hsmkeys CKA_ID; 0 for other IDs.
func KEKVersion(id []byte) uint32 {
	if len(id) != KEKIDSize {
		return 0
	}
	return binary.BigEndian.Uint32(id)
}

// WrapTemplate is the CKA_WRAP_TEMPLATE of every KEK: it wraps only keys
// that may leave only under trusted keys.
func WrapTemplate() []ckraw.Attr {
	return []ckraw.Attr{{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true}}
}

func commonKEKAttrs(label string, id []byte) []ckraw.Attr {
	return []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_LABEL, Value: label},
		{Type: pkcs11.CKA_ID, Value: id},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false},
		{Type: pkcs11.CKA_COPYABLE, Value: false},
	}
}

func aesKEKTemplate(label string, id []byte) []ckraw.Attr {
	return append(commonKEKAttrs(label, id),
		ckraw.Attr{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		ckraw.Attr{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		ckraw.Attr{Type: pkcs11.CKA_PRIVATE, Value: false}, // the SO's objects are public
		ckraw.Attr{Type: pkcs11.CKA_SENSITIVE, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_TRUSTED, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_WRAP, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_UNWRAP, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_ENCRYPT, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_DECRYPT, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_SIGN, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_VERIFY, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_DERIVE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(AESKEKMechanisms)},
		ckraw.Attr{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: UnwrapTemplate()},
		ckraw.Attr{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: WrapTemplate()},
	)
}

// AdminSession is a session outside any pool, for KEK administration, which
// needs the SO and user logins one after the other (an application is logged
// in as one of them at a time: PKCS#11 v2.40 §5.6, C_Login).
type AdminSession struct {
	m        *Module
	h        pkcs11.SessionHandle
	loggedIn bool // we logged in (and so must log out)
}

// OpenAdmin opens a read-write session on slot.
func (m *Module) OpenAdmin(slot uint) (*AdminSession, error) {
	h, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, wrapErr("C_OpenSession", err)
	}
	return &AdminSession{m: m, h: h}, nil
}

// Login logs in as userType (CKU_SO or CKU_USER). If the application is
// already logged in as that user, that is success and Logout will leave
// the login to its owner.
func (a *AdminSession) Login(userType uint, pin []byte) error {
	err := a.m.ctx.Login(a.h, userType, string(pin))
	if code, ok := CodeOf(err); ok && code == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
		return nil
	}
	if err != nil {
		return wrapErr("C_Login", err)
	}
	a.loggedIn = true
	return nil
}

// Logout ends a login this session made.
func (a *AdminSession) Logout() {
	if a.loggedIn {
		_ = a.m.ctx.Logout(a.h)
		a.loggedIn = false
	}
}

// Close logs out (if it logged in) and closes the session.
func (a *AdminSession) Close() {
	a.Logout()
	_ = a.m.ctx.CloseSession(a.h)
}

// GenerateAESKEK makes an AES KEK (SO session).
func (a *AdminSession) GenerateAESKEK(label string, id []byte, size int) (Object, error) {
	if size != 16 && size != 24 && size != 32 {
		return 0, fmt.Errorf("%w: aes kek of %d bytes", ErrInput, size)
	}
	tmpl := append(aesKEKTemplate(label, id), ckraw.Attr{Type: pkcs11.CKA_VALUE_LEN, Value: uint(size)})
	h, err := a.m.raw.GenerateKey(uint(a.h), pkcs11.CKM_AES_KEY_GEN, tmpl)
	return Object(h), a.m.generateErr(a.h, pkcs11.CKM_AES_KEY_GEN, tmpl, err)
}

// ImportAESKEK makes an AES KEK from a value (SO session). The caller
// clears value.
func (a *AdminSession) ImportAESKEK(label string, id, value []byte) (Object, error) {
	if n := len(value); n != 16 && n != 24 && n != 32 {
		return 0, fmt.Errorf("%w: aes kek value of %d bytes", ErrInput, n)
	}
	tmpl := append(aesKEKTemplate(label, id), ckraw.Attr{Type: pkcs11.CKA_VALUE, Value: value})
	h, err := a.m.raw.CreateObject(uint(a.h), tmpl)
	return Object(h), a.m.createErr(a.h, tmpl, err)
}

// GenerateRSAKEKPrivate makes the private half of an RSA KEK (user session)
// and returns its public numbers; the generated public half is a session
// object destroyed at once, since only the SO can make a trusted one.
func (a *AdminSession) GenerateRSAKEKPrivate(label string, id []byte, bits int) (Object, []byte, []byte, error) {
	if bits != 2048 && bits != 3072 && bits != 4096 {
		return 0, nil, nil, fmt.Errorf("%w: rsa kek of %d bits", ErrInput, bits)
	}
	pub := []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_MODULUS_BITS, Value: uint(bits)},
		{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}},
		{Type: pkcs11.CKA_WRAP, Value: false},
		{Type: pkcs11.CKA_ENCRYPT, Value: false},
		{Type: pkcs11.CKA_VERIFY, Value: false},
	}
	priv := append(commonKEKAttrs(label, id),
		ckraw.Attr{Type: pkcs11.CKA_PRIVATE, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_SENSITIVE, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_UNWRAP, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_DECRYPT, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_SIGN, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_SIGN_RECOVER, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_DERIVE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(RSAKEKMechanisms)},
		ckraw.Attr{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: UnwrapTemplate()},
	)
	ph, kh, err := a.m.raw.GenerateKeyPair(uint(a.h), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv)
	if err != nil {
		return 0, nil, nil, a.m.generatePairErr(a.h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv, err)
	}
	defer a.m.ctx.DestroyObject(a.h, pkcs11.ObjectHandle(ph))
	got, err := a.m.ctx.GetAttributeValue(a.h, pkcs11.ObjectHandle(ph), []*pkcs11.Attribute{
		{Type: pkcs11.CKA_MODULUS}, {Type: pkcs11.CKA_PUBLIC_EXPONENT},
	})
	if err != nil {
		err = wrapErr("C_GetAttributeValue", err)
		if derr := a.m.ctx.DestroyObject(a.h, pkcs11.ObjectHandle(kh)); derr != nil {
			return 0, nil, nil, fmt.Errorf("%w; the private key it made is still on the token: %w", err, wrapErr("C_DestroyObject", derr))
		}
		return 0, nil, nil, err
	}
	return Object(kh), got[0].Value, got[1].Value, nil
}

// CreateTrustedRSAPublic makes a trusted, wrap-only RSA public key (SO
// session): the public half of an RSA KEK, or another party's key.
func (a *AdminSession) CreateTrustedRSAPublic(label string, id, modulus, exponent []byte) (Object, error) {
	if len(modulus) < 256 || len(modulus) > 1024 || len(exponent) == 0 || len(exponent) > 8 {
		return 0, fmt.Errorf("%w: rsa public key of %d modulus bytes", ErrInput, len(modulus))
	}
	tmpl := append(commonKEKAttrs(label, id),
		ckraw.Attr{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_PUBLIC_KEY)},
		ckraw.Attr{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_RSA)},
		ckraw.Attr{Type: pkcs11.CKA_PRIVATE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_MODULUS, Value: modulus},
		ckraw.Attr{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: exponent},
		ckraw.Attr{Type: pkcs11.CKA_TRUSTED, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_WRAP, Value: true},
		ckraw.Attr{Type: pkcs11.CKA_ENCRYPT, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_VERIFY, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_VERIFY_RECOVER, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_DERIVE, Value: false},
		ckraw.Attr{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(RSAKEKMechanisms)},
		ckraw.Attr{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: WrapTemplate()},
	)
	h, err := a.m.raw.CreateObject(uint(a.h), tmpl)
	return Object(h), a.m.createErr(a.h, tmpl, err)
}

// Destroy destroys a token object.
func (a *AdminSession) Destroy(obj Object) error {
	return wrapErr("C_DestroyObject", a.m.ctx.DestroyObject(a.h, pkcs11.ObjectHandle(obj)))
}

// FindKEKs finds the KEKs visible to this session, with label and/or id
// when given, and the foreign objects that share a label or an ID with
// them. The private halves of RSA KEKs are visible only when the user is
// logged in.
func (a *AdminSession) FindKEKs(label string, id []byte) ([]KEKObject, []ForeignObject, error) {
	return findKEKs(a.m, a.h, label, id)
}

// FindKEKs is FindKEKs through a pool session (logged in as the user).
func (p *Pool) FindKEKs(s *Session, label string, id []byte) ([]KEKObject, []ForeignObject, error) {
	return findKEKs(p.mod, s.h, label, id)
}

// ForeignObject is a token object that looks like part of a KEK (its class
// and its wrap or unwrap attribute) but is not one: anyone could have made
// it, so it never joins a KEK, never decides what a KEK is, and no KEK
// command destroys or uses it.
type ForeignObject struct {
	Object Object
	Class  uint
	Label  string
	ID     []byte
	Why    string
}

// candidate is one object findKEKs looks at.
type candidate struct {
	obj      Object
	class    uint
	label    string
	id       []byte
	keyType  uint64
	trusted  bool
	private  bool
	valueLen uint64
	modulus  []byte
	exponent []byte
}

// findKEKs lists the objects that could be KEK halves (secret and public
// keys that can wrap, private keys that can unwrap) and keeps only those no
// one without a PIN could have made:
//
//   - a wrapping object (AES key, RSA public key) must be CKA_TRUSTED, which
//     only the SO can give, in the creating template (PKCS#11 v2.40 §4.9,
//     TOKEN-FACTS);
//   - an RSA private half must be CKA_PRIVATE, which takes the user login
//     (§4.4: private objects);
//   - the halves of an RSA KEK must share the CKA_ID and the modulus.
//
// Everything else that shares the label or ID asked for is returned as a
// ForeignObject: a session with no login can create public token objects
// with any label and ID (finding 7 of the 2026 review), and they must not
// merge into, hide or break a KEK.
func findKEKs(m *Module, h pkcs11.SessionHandle, label string, id []byte) ([]KEKObject, []ForeignObject, error) {
	var all []candidate
	for _, q := range []struct {
		class uint
		use   uint
	}{
		{pkcs11.CKO_SECRET_KEY, pkcs11.CKA_WRAP},
		{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_WRAP},
		{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_UNWRAP},
	} {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, q.class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(q.use, true),
		}
		if label != "" {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		}
		if len(id) > 0 {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
		}
		objs, err := findObjects(m.ctx, h, tmpl, 4096)
		if err != nil {
			return nil, nil, err
		}
		for _, o := range objs {
			c, err := readCandidate(m, h, o, q.class)
			if err != nil {
				return nil, nil, err
			}
			all = append(all, c)
		}
	}

	var foreign []ForeignObject
	reject := func(c candidate, why string) {
		foreign = append(foreign, ForeignObject{Object: c.obj, Class: c.class, Label: c.label, ID: c.id, Why: why})
	}
	byID := map[string]*KEKObject{}
	var order []string
	get := func(c candidate) *KEKObject {
		k := byID[string(c.id)]
		if k == nil {
			k = &KEKObject{Label: c.label, ID: bytes.Clone(c.id)}
			byID[string(c.id)] = k
			order = append(order, string(c.id))
		}
		return k
	}
	// Wrapping objects first: they are the SO's, and they decide the kind.
	for _, c := range all {
		switch {
		case c.class == pkcs11.CKO_PRIVATE_KEY:
			continue
		case !c.trusted:
			reject(c, "not CKA_TRUSTED: anyone, even without a pin, could have made it")
			continue
		case c.class == pkcs11.CKO_SECRET_KEY && c.keyType != pkcs11.CKK_AES,
			c.class == pkcs11.CKO_PUBLIC_KEY && c.keyType != pkcs11.CKK_RSA:
			reject(c, "neither an aes key nor an rsa public key")
			continue
		}
		k := get(c)
		if k.Wrap != 0 {
			k.Duplicate = true // two trusted objects with one id: only the so could do that
			continue
		}
		k.Wrap = c.obj
		if c.class == pkcs11.CKO_SECRET_KEY {
			k.Kind, k.Bits, k.Unwrap = KindAES, int(c.valueLen)*8, c.obj
		} else {
			k.Kind, k.Modulus, k.Exponent, k.Bits = KindRSAPublic, c.modulus, c.exponent, len(c.modulus)*8
		}
	}
	for _, c := range all {
		if c.class != pkcs11.CKO_PRIVATE_KEY {
			continue
		}
		if !c.private || c.keyType != pkcs11.CKK_RSA {
			reject(c, "a public (CKA_PRIVATE=false) or non-rsa private key: not an hsmkeys kek half")
			continue
		}
		k := byID[string(c.id)]
		switch {
		case k != nil && k.Kind == KindAES:
			reject(c, "shares the id of an aes kek")
			continue
		case k != nil && k.Kind == KindRSA:
			k.Duplicate = true
			continue
		case k != nil && !bytes.Equal(k.Modulus, c.modulus):
			reject(c, "shares the id of an rsa kek but not its modulus")
			continue
		}
		k = get(c)
		k.Kind, k.Unwrap = KindRSA, c.obj
		if k.Bits == 0 {
			k.Bits = len(c.modulus) * 8
		}
	}
	out := make([]KEKObject, 0, len(order))
	for _, key := range order {
		out = append(out, *byID[key])
	}
	return out, foreign, nil
}

// readCandidate reads what findKEKs needs to know about obj.
func readCandidate(m *Module, h pkcs11.SessionHandle, obj Object, class uint) (candidate, error) {
	attrs := []*pkcs11.Attribute{{Type: pkcs11.CKA_LABEL}, {Type: pkcs11.CKA_ID}, {Type: pkcs11.CKA_KEY_TYPE}, {Type: pkcs11.CKA_PRIVATE}}
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		attrs = append(attrs, &pkcs11.Attribute{Type: pkcs11.CKA_TRUSTED}, &pkcs11.Attribute{Type: pkcs11.CKA_VALUE_LEN})
	case pkcs11.CKO_PUBLIC_KEY:
		attrs = append(attrs, &pkcs11.Attribute{Type: pkcs11.CKA_TRUSTED}, &pkcs11.Attribute{Type: pkcs11.CKA_MODULUS}, &pkcs11.Attribute{Type: pkcs11.CKA_PUBLIC_EXPONENT})
	case pkcs11.CKO_PRIVATE_KEY:
		attrs = append(attrs, &pkcs11.Attribute{Type: pkcs11.CKA_MODULUS})
	}
	got, err := m.ctx.GetAttributeValue(h, pkcs11.ObjectHandle(obj), attrs)
	if err != nil {
		if !attributeAnswer(err) {
			return candidate{}, wrapErr("C_GetAttributeValue", err)
		}
		// An object that will not say what it is (an attribute it lacks):
		// read one by one, what is missing stays empty, so it is foreign.
		for i := range attrs {
			if g, err := m.ctx.GetAttributeValue(h, pkcs11.ObjectHandle(obj), attrs[i:i+1]); err == nil {
				attrs[i] = g[0]
			} else if !attributeAnswer(err) {
				return candidate{}, wrapErr("C_GetAttributeValue", err)
			}
		}
		got = attrs
	}
	c := candidate{obj: obj, class: class, label: string(got[0].Value), id: bytes.Clone(got[1].Value)}
	c.keyType, _ = ulong(got[2].Value)
	c.private = len(got[3].Value) == 1 && got[3].Value[0] != 0
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		c.trusted = len(got[4].Value) == 1 && got[4].Value[0] != 0
		c.valueLen, _ = ulong(got[5].Value)
	case pkcs11.CKO_PUBLIC_KEY:
		c.trusted = len(got[4].Value) == 1 && got[4].Value[0] != 0
		c.modulus, c.exponent = got[5].Value, got[6].Value
	case pkcs11.CKO_PRIVATE_KEY:
		c.modulus = got[4].Value
	}
	return c, nil
}

func findObjects(ctx *ckraw.Ctx, h pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]Object, error) {
	if err := ctx.FindObjectsInit(h, tmpl); err != nil {
		return nil, wrapErr("C_FindObjectsInit", err)
	}
	var out []Object
	for len(out) < max {
		hs, _, err := ctx.FindObjects(h, min(max-len(out), 64))
		if err != nil {
			_ = ctx.FindObjectsFinal(h)
			return nil, wrapErr("C_FindObjects", err)
		}
		if len(hs) == 0 {
			break
		}
		for _, o := range hs {
			out = append(out, Object(o))
		}
	}
	return out, wrapErr("C_FindObjectsFinal", ctx.FindObjectsFinal(h))
}

// Problem is one way a KEK's objects differ from what hsmkeys requires.
type Problem struct {
	Text string
	// Outdated: a restriction that KEKs made by hsmkeys before the 2026
	// review lack (CKA_ALLOWED_MECHANISMS, the full unwrap template). Such
	// a KEK cannot be fixed (it is not modifiable): it may still unwrap, so
	// that keys can be rewrapped, but never wrap again.
	Outdated bool
}

// KEKProblems checks a KEK's objects against the attributes hsmkeys
// requires and says what is wrong, in words; nil means none. An error is a
// failure to ask (a device error, a dead session), which says nothing about
// the KEK.
func (a *AdminSession) KEKProblems(k KEKObject) ([]Problem, error) { return kekProblems(a.m, a.h, k) }

// KEKProblems is KEKProblems through a pool session.
func (p *Pool) KEKProblems(s *Session, k KEKObject) ([]Problem, error) {
	return kekProblems(p.mod, s.h, k)
}

// attributeAnswer reports whether err from C_GetAttributeValue is the
// token's answer about the attribute (the object has none, or it is
// secret: PKCS#11 v2.40 §5.7), which makes a KEK unfit; any other failure
// is the token's, not the KEK's.
func attributeAnswer(err error) bool {
	code, ok := CodeOf(err)
	return !ok || code == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || code == pkcs11.CKR_ATTRIBUTE_SENSITIVE
}

// legacyUnwrapTemplate is the CKA_UNWRAP_TEMPLATE of KEKs made before
// the template pinned class, key type, every usage and the mechanisms.
func legacyUnwrapTemplate() []ckraw.Attr {
	return []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: true},
		{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: false},
		{Type: pkcs11.CKA_UNWRAP, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
	}
}

func kekProblems(m *Module, h pkcs11.SessionHandle, k KEKObject) ([]Problem, error) {
	var problems []Problem
	var failed error
	add := func(outdated bool, format string, a ...any) {
		problems = append(problems, Problem{Text: fmt.Sprintf(format, a...), Outdated: outdated})
	}
	check := func(obj Object, role string, want []boolAttr, mechs []uint, wrapT, unwrapT bool) {
		q := make([]*pkcs11.Attribute, len(want)+1)
		for i, a := range want {
			q[i] = &pkcs11.Attribute{Type: a.t}
		}
		q[len(want)] = &pkcs11.Attribute{Type: pkcs11.CKA_ALLOWED_MECHANISMS}
		got, err := m.ctx.GetAttributeValue(h, pkcs11.ObjectHandle(obj), q)
		if err != nil {
			if !attributeAnswer(err) {
				failed = cmp.Or(failed, wrapErr("C_GetAttributeValue", err))
				return
			}
			add(false, "%s: cannot read attributes: %v", role, wrapErr("C_GetAttributeValue", err))
			return
		}
		for i, a := range want {
			v := got[i].Value
			if len(v) != 1 || (v[0] != 0) != a.v {
				add(false, "%s: %s is not %v", role, AttrName(a.t), a.v)
			}
		}
		switch am := got[len(want)].Value; {
		case len(am) == 0:
			add(true, "%s: no CKA_ALLOWED_MECHANISMS, so the token lets it work with any mechanism (%s)", role, mechExample(mechs))
		case !mechsWithin(am, mechs):
			add(false, "%s: CKA_ALLOWED_MECHANISMS allows more than %s", role, mechNames(mechs))
		}
		if wrapT {
			if ok, err := templateHas(m, h, obj, pkcs11.CKA_WRAP_TEMPLATE, WrapTemplate()); err != nil {
				failed = cmp.Or(failed, err)
			} else if !ok {
				add(false, "%s: no CKA_WRAP_TEMPLATE requiring CKA_WRAP_WITH_TRUSTED", role)
			}
		}
		if unwrapT {
			full, err := templateHas(m, h, obj, pkcs11.CKA_UNWRAP_TEMPLATE, UnwrapTemplate())
			if err != nil {
				failed = cmp.Or(failed, err)
				return
			}
			if full {
				return
			}
			if legacy, err := templateHas(m, h, obj, pkcs11.CKA_UNWRAP_TEMPLATE, legacyUnwrapTemplate()); err != nil {
				failed = cmp.Or(failed, err)
			} else if legacy {
				add(true, "%s: CKA_UNWRAP_TEMPLATE does not pin class, key type, every usage and the allowed mechanisms", role)
			} else {
				add(false, "%s: no CKA_UNWRAP_TEMPLATE forcing sensitive session keys", role)
			}
		}
	}
	if k.Duplicate {
		add(false, "more than one trusted object or private half has this id")
	}
	base := []boolAttr{
		{pkcs11.CKA_TOKEN, true},
		{pkcs11.CKA_MODIFIABLE, false},
	}
	switch k.Kind {
	case KindAES:
		check(k.Wrap, "aes key", append(base,
			boolAttr{pkcs11.CKA_SENSITIVE, true}, boolAttr{pkcs11.CKA_EXTRACTABLE, false},
			boolAttr{pkcs11.CKA_TRUSTED, true}, boolAttr{pkcs11.CKA_WRAP, true}, boolAttr{pkcs11.CKA_UNWRAP, true},
			boolAttr{pkcs11.CKA_ENCRYPT, false}, boolAttr{pkcs11.CKA_DECRYPT, false},
			boolAttr{pkcs11.CKA_SIGN, false}, boolAttr{pkcs11.CKA_DERIVE, false}), AESKEKMechanisms, true, true)
	case KindRSA, KindRSAPublic:
		if k.Wrap == 0 {
			add(false, "no trusted public half: it cannot wrap")
		} else {
			check(k.Wrap, "public key", append(base,
				boolAttr{pkcs11.CKA_TRUSTED, true}, boolAttr{pkcs11.CKA_WRAP, true},
				boolAttr{pkcs11.CKA_ENCRYPT, false}, boolAttr{pkcs11.CKA_VERIFY, false},
				boolAttr{pkcs11.CKA_DERIVE, false}), RSAKEKMechanisms, true, false)
		}
		if k.Kind == KindRSA {
			check(k.Unwrap, "private key", append(base,
				boolAttr{pkcs11.CKA_PRIVATE, true}, boolAttr{pkcs11.CKA_SENSITIVE, true},
				boolAttr{pkcs11.CKA_EXTRACTABLE, false}, boolAttr{pkcs11.CKA_UNWRAP, true},
				boolAttr{pkcs11.CKA_DECRYPT, false}, boolAttr{pkcs11.CKA_SIGN, false},
				boolAttr{pkcs11.CKA_DERIVE, false}), RSAKEKMechanisms, false, true)
		}
	}
	if failed != nil {
		return nil, failed
	}
	return problems, nil
}

var mechNamesByType = map[uint]string{
	pkcs11.CKM_AES_KEY_WRAP: "CKM_AES_KEY_WRAP", pkcs11.CKM_AES_KEY_WRAP_PAD: "CKM_AES_KEY_WRAP_PAD",
	CKMAESKeyWrapKWP: "CKM_AES_KEY_WRAP_KWP", pkcs11.CKM_RSA_PKCS_OAEP: "CKM_RSA_PKCS_OAEP",
	pkcs11.CKM_AES_GCM: "CKM_AES_GCM", pkcs11.CKM_AES_CTR: "CKM_AES_CTR", pkcs11.CKM_AES_ECB: "CKM_AES_ECB",
	pkcs11.CKM_AES_CBC: "CKM_AES_CBC", pkcs11.CKM_RSA_PKCS: "CKM_RSA_PKCS",
}

// MechName is the CKM_* name of a mechanism.
func MechName(m uint) string {
	if n, ok := mechNamesByType[m]; ok {
		return n
	}
	return fmt.Sprintf("mechanism 0x%X", m)
}

func mechNames(ms []uint) string {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = MechName(m)
	}
	return strings.Join(names, ", ")
}

// mechExample names the dangerous mechanisms an unrestricted KEK half of
// this kind accepts.
func mechExample(ms []uint) string {
	if slices.Contains(ms, pkcs11.CKM_RSA_PKCS_OAEP) {
		return "CKM_RSA_PKCS too, a padding oracle"
	}
	return "CKM_AES_CBC and CKM_AES_ECB too"
}

// templateHas reports whether obj's array attribute t holds every entry of
// want with the same value. An error is a failure to ask (see
// attributeAnswer).
func templateHas(m *Module, h pkcs11.SessionHandle, obj Object, t uint, want []ckraw.Attr) (bool, error) {
	got, err := m.raw.GetTemplate(uint(h), uint(obj), t)
	if err != nil {
		if !attributeAnswer(err) {
			return false, wrapErr("C_GetAttributeValue", err)
		}
		return false, nil
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			if b, ok := g.Value.([]byte); ok && g.Type == w.Type && sameValue(w.Type, b, w.Value) {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}

// WrapMech names a key-wrapping mechanism and, for RSA-OAEP, its hash.
type WrapMech struct {
	Mech uint // CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_RSA_PKCS_OAEP
	Hash uint // CKM_SHA_1 or CKM_SHA256 for OAEP (MGF1 with the same hash)
}

func (w WrapMech) mechanism() ([]*ckraw.Mechanism, error) {
	switch w.Mech {
	case pkcs11.CKM_AES_KEY_WRAP, pkcs11.CKM_AES_KEY_WRAP_PAD, CKMAESKeyWrapKWP:
		return []*ckraw.Mechanism{ckraw.NewMechanism(w.Mech, nil)}, nil
	case pkcs11.CKM_RSA_PKCS_OAEP:
		var mgf uint
		switch w.Hash {
		case pkcs11.CKM_SHA_1:
			mgf = pkcs11.CKG_MGF1_SHA1
		case pkcs11.CKM_SHA256:
			mgf = pkcs11.CKG_MGF1_SHA256
		default:
			return nil, fmt.Errorf("%w: oaep hash 0x%X", ErrInput, w.Hash)
		}
		// PKCS#11 v2.40 mechanisms §2.1.8 CK_RSA_PKCS_OAEP_PARAMS, empty label.
		return []*ckraw.Mechanism{ckraw.NewMechanism(w.Mech, ckraw.NewOAEPParams(w.Hash, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}, nil
	}
	return nil, fmt.Errorf("%w: wrap mechanism 0x%X", ErrInput, w.Mech)
}

// padAlternative: RFC 5649 goes by two mechanism numbers,
// CKM_AES_KEY_WRAP_PAD (SoftHSM; PKCS#11 v2.40 drafts) and
// CKM_AES_KEY_WRAP_KWP (PKCS#11 v3.0 §2.15.4). When the token does not know
// the one asked for, the other is tried.
func padAlternative(mech WrapMech, err error) (WrapMech, bool) {
	if code, _ := CodeOf(err); code != pkcs11.CKR_MECHANISM_INVALID {
		return WrapMech{}, false
	}
	switch mech.Mech {
	case pkcs11.CKM_AES_KEY_WRAP_PAD:
		return WrapMech{Mech: CKMAESKeyWrapKWP}, true
	case CKMAESKeyWrapKWP:
		return WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, true
	}
	return WrapMech{}, false
}

// kwpOf gives RFC 5649 the number the token's profile names it by
// (Profile.KWP); padAlternative still tries the other one.
func (p *Pool) kwpOf(mech WrapMech) WrapMech {
	if (mech.Mech == pkcs11.CKM_AES_KEY_WRAP_PAD || mech.Mech == CKMAESKeyWrapKWP) && p.profile().KWP != 0 {
		mech.Mech = p.profile().KWP
	}
	return mech
}

// CKMAESKeyWrapKWP is CKM_AES_KEY_WRAP_KWP of PKCS#11 v3.0 (RFC 5649), which
// miekg v1.1.2 does not name. SoftHSM 2.6.1 offers RFC 5649 as
// CKM_AES_KEY_WRAP_PAD instead.
const CKMAESKeyWrapKWP = 0x210B

// MaxWrapped bounds a wrapped key: an RSA-4096 block.
const MaxWrapped = 512

// Wrap wraps key under kek.
func (p *Pool) Wrap(s *Session, mech WrapMech, kek, key Object) ([]byte, error) {
	m, err := mech.mechanism()
	if err != nil {
		return nil, err
	}
	mech = p.kwpOf(mech)
	if mech.Mech != pkcs11.CKM_RSA_PKCS_OAEP {
		// AES key wrap has no parameters: one C_WrapKey with room for a
		// 256-bit key (RFC 3394/5649: the key plus 8 bytes).
		out, err := p.mod.raw.WrapKey(uint(s.h), mech.Mech, uint(kek), uint(key), 64)
		if alt, ok := padAlternative(mech, err); ok {
			out, err = p.mod.raw.WrapKey(uint(s.h), alt.Mech, uint(kek), uint(key), 64)
		}
		return out, wrapErr("C_WrapKey", err)
	}
	out, err := p.ctx().WrapKey(s.h, m, pkcs11.ObjectHandle(kek), pkcs11.ObjectHandle(key))
	return out, wrapErr("C_WrapKey", err)
}

// ErrWrappedKeyInvalid: the token refused to unwrap the blob: wrong KEK,
// damaged blob, or not a key.
var ErrWrappedKeyInvalid = errors.New("wrapped key invalid or wrong kek")

// Unwrap unwraps wrapped under kek into a session key of size bytes with
// the policy of every unwrapped key (UnwrapTemplate plus encrypt/decrypt),
// then reads the policy back.
func (p *Pool) Unwrap(s *Session, mech WrapMech, kek Object, wrapped []byte, size int) (Object, error) {
	return p.UnwrapChecked(s, mech, kek, wrapped, size, true)
}

// UnwrapChecked is Unwrap, reading the policy back only when verify is true.
func (p *Pool) UnwrapChecked(s *Session, mech WrapMech, kek Object, wrapped []byte, size int, verify bool) (Object, error) {
	if len(wrapped) == 0 || len(wrapped) > MaxWrapped {
		// miekg's UnwrapKey panics on an empty blob (TOKEN-FACTS).
		return 0, fmt.Errorf("%w: wrapped key of %d bytes", ErrInput, len(wrapped))
	}
	if size != 16 && size != 24 && size != 32 {
		return 0, fmt.Errorf("%w: aes key length %d", ErrInput, size)
	}
	if mech.Mech != pkcs11.CKM_RSA_PKCS_OAEP && len(wrapped) != size+8 {
		// RFC 3394 §2.2.1 and RFC 5649 §4.1: n 64-bit blocks wrap into n+1.
		return 0, fmt.Errorf("%w: %d wrapped bytes cannot hold a %d-byte key", ErrWrappedKeyInvalid, len(wrapped), size)
	}
	m, err := mech.mechanism()
	if err != nil {
		return 0, err
	}
	spec := SecretKeySpec{Bytes: size, Extractable: true, WrapWithTrusted: true}
	pol := p.keyPolicy(spec)
	// Every attribute of the KEK's CKA_UNWRAP_TEMPLATE, whatever the KEK
	// carries (an older KEK's template pins less; ours pins it all).
	// CKA_VALUE_LEN only where the profile says it belongs (Luna wants
	// it); SoftHSM refuses it in unwrap templates (CKR_ATTRIBUTE_READ_ONLY,
	// TOKEN-FACTS); the length is checked below either way.
	tmpl := p.fitTemplate(toMiekg(UnwrapTemplate()))
	if p.profile().UnwrapValueLen {
		// Before CKA_MODIFIABLE=false, which stays last (UnwrapTemplate).
		tmpl = slices.Insert(tmpl, len(tmpl)-1, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size))
	}
	mech = p.kwpOf(mech)
	m, err = mech.mechanism()
	if err != nil {
		return 0, err
	}
	h, err := p.ctx().UnwrapKey(s.h, m, pkcs11.ObjectHandle(kek), wrapped, tmpl)
	if alt, ok := padAlternative(mech, err); ok {
		am, _ := alt.mechanism()
		h, err = p.ctx().UnwrapKey(s.h, am, pkcs11.ObjectHandle(kek), wrapped, tmpl)
		m = am // the mechanism of the error below
	}
	if err != nil {
		err = p.mod.unwrapErr(s.h, m, pkcs11.ObjectHandle(kek), wrapped, tmpl, err)
		if code, _ := CodeOf(err); unwrapFailure(code) && (code != pkcs11.CKR_GENERAL_ERROR || p.profile().IsBadTag(code)) {
			return 0, fmt.Errorf("%w: %w", ErrWrappedKeyInvalid, err)
		}
		return 0, err
	}
	// One read of the policy and the length. BUG(p11): SoftHSM 2.6.1
	// leaves CKA_VALUE_LEN of an unwrapped key at 0, so the length can be
	// checked here only on tokens that set it; for AES wraps it was checked
	// from the blob's length above, and an exported key's manifest binds
	// its length and check value.
	if !verify {
		return Object(h), nil
	}
	if err := p.verifyAttrs(s, Object(h), pol, uint(size), true); err != nil {
		_ = p.ctx().DestroyObject(s.h, h)
		if errors.Is(err, errValueLen) {
			return 0, fmt.Errorf("%w: the wrapped key is not a %d-byte key", ErrWrappedKeyInvalid, size)
		}
		return 0, err
	}
	return Object(h), nil
}

// unwrapFailure reports the codes that mean "this blob does not unwrap under
// this key". SoftHSM reports a failed RFC 3394/5649 integrity check as
// CKR_GENERAL_ERROR (TOKEN-FACTS); in C_UnwrapKey it means just that there,
// and counts only on tokens whose profile reads it as a failed integrity
// check (Profile.BadTag); elsewhere it is a device failure.
func unwrapFailure(code uint) bool {
	switch code {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID, pkcs11.CKR_FUNCTION_FAILED:
		return true
	}
	return false
}
