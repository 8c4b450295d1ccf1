package p11

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// What each object may do, in attributes the token enforces (classes of
// attack: Clulow 2003, Tookan / Bortolozzo et al. 2010, Bardou et al.,
// CRYPTO 2012):
//
//   - CKA_ALLOWED_MECHANISMS (PKCS#11 v2.40 §4.7.2, common key attributes)
//     on every key: an RSA KEK half takes OAEP only, so C_UnwrapKey with
//     CKM_RSA_PKCS (a PKCS#1 v1.5 padding oracle) is refused; an AES KEK
//     takes the key wraps only, so no C_WrapKey with CBC or ECB and an IV
//     or blocks of the caller's choosing; a session key takes exactly the
//     mechanisms the provider uses on it.
//   - CKA_MODIFIABLE=false (§4.4, common storage object attributes) on
//     every key, session keys included, so that no usage attribute
//     (CKA_DERIVE, CKA_WRAP, CKA_SIGN, ...) can be switched on later.
//   - The unwrap template (§4.9/§4.10 CKA_UNWRAP_TEMPLATE, and the one we
//     pass to C_UnwrapKey, §5.14) pins the class, the key type, every usage
//     attribute, the allowed mechanisms and CKA_MODIFIABLE, so that a blob
//     cannot come back as CKK_GENERIC_SECRET, an HMAC key or a wrapping key.

// Mechanisms each kind of object may be used with.
var (
	// SessionKeyMechanisms: AES-GCM (seal, open, messages), AES-CTR (the
	// two-pass decryption of large messages: CTR, stream.go) and AES-ECB
	// (the key check value of one zero block: KCV). Wrapping a session key
	// uses the KEK's mechanism, not one of the session key's.
	SessionKeyMechanisms = []uint{pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_CTR, pkcs11.CKM_AES_ECB}
	// AESKEKMechanisms: RFC 3394 and RFC 5649 under both of its numbers.
	AESKEKMechanisms = []uint{pkcs11.CKM_AES_KEY_WRAP, pkcs11.CKM_AES_KEY_WRAP_PAD, CKMAESKeyWrapKWP}
	// RSAKEKMechanisms: RSAES-OAEP only, for both halves.
	RSAKEKMechanisms = []uint{pkcs11.CKM_RSA_PKCS_OAEP}
)

// ulongSize is sizeof(CK_ULONG): unsigned long, the width of a Go uint on
// every Unix ABI (as ckraw and miekg assume).
const ulongSize = strconv.IntSize / 8

func appendUlong(b []byte, v uint) []byte {
	if ulongSize == 4 {
		return binary.NativeEndian.AppendUint32(b, uint32(v))
	}
	return binary.NativeEndian.AppendUint64(b, uint64(v))
}

// MechList encodes a CKA_ALLOWED_MECHANISMS value: an array of
// CK_MECHANISM_TYPE, CK_ULONGs in the host's byte order.
func MechList(mechs []uint) []byte {
	out := make([]byte, 0, ulongSize*len(mechs))
	for _, m := range mechs {
		out = appendUlong(out, m)
	}
	return out
}

// parseMechList decodes a CKA_ALLOWED_MECHANISMS value.
func parseMechList(b []byte) ([]uint, bool) {
	if len(b)%ulongSize != 0 {
		return nil, false
	}
	out := make([]uint, 0, len(b)/ulongSize)
	for i := 0; i < len(b); i += ulongSize {
		v, _ := ulong(b[i : i+ulongSize])
		out = append(out, uint(v))
	}
	return out, true
}

// mechsWithin reports whether the allowed mechanisms an object carries
// (got, as the token answered) are a non-empty subset of want. An empty
// list means "any mechanism" (§4.7.2).
func mechsWithin(got []byte, want []uint) bool {
	ms, ok := parseMechList(got)
	if !ok || len(ms) == 0 {
		return false
	}
	for _, m := range ms {
		if !slices.Contains(want, m) {
			return false
		}
	}
	return true
}

// UnwrapTemplate is what every key unwrapped under a KEK must be: the
// KEK's CKA_UNWRAP_TEMPLATE and, with the same entries, the template of our
// C_UnwrapKey (SoftHSM does not merge the two: ckraw's BUG note). It pins
// the class, the key type, storage, every usage attribute and the allowed
// mechanisms; CKA_MODIFIABLE=false comes last, because SoftHSM 2.6.1 applies
// an unwrap template in order and refuses every attribute after it
// (TOKEN-FACTS).
func UnwrapTemplate() []ckraw.Attr {
	return []ckraw.Attr{
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: true},
		{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true},
		{Type: pkcs11.CKA_COPYABLE, Value: false},
		{Type: pkcs11.CKA_ENCRYPT, Value: true},
		{Type: pkcs11.CKA_DECRYPT, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: false},
		{Type: pkcs11.CKA_UNWRAP, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
		{Type: pkcs11.CKA_SIGN, Value: false},
		{Type: pkcs11.CKA_VERIFY, Value: false},
		{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(SessionKeyMechanisms)},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false},
	}
}

// toMiekg converts flat ckraw attributes for a miekg call.
func toMiekg(attrs []ckraw.Attr) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, len(attrs))
	for i, a := range attrs {
		out[i] = pkcs11.NewAttribute(a.Type, a.Value)
	}
	return out
}

// sameMechs reports whether an allowed-mechanisms value holds exactly want,
// in any order (SoftHSM returns them sorted).
func sameMechs(got []byte, want []uint) bool {
	ms, ok := parseMechList(got)
	if !ok {
		return false
	}
	slices.Sort(ms)
	w := slices.Sorted(slices.Values(want))
	return slices.Equal(slices.Compact(ms), w)
}

// encoded is an attribute value as a token stores it.
func encoded(v any) []byte {
	switch x := v.(type) {
	case bool:
		if x {
			return []byte{1}
		}
		return []byte{0}
	case uint:
		return appendUlong(nil, x)
	case []byte:
		return x
	case string:
		return []byte(x)
	}
	panic(fmt.Sprintf("p11: attribute value of type %T", v))
}

// sameValue compares a value the token returned with one we asked for; a
// CK_BBOOL is any non-zero byte for true.
func sameValue(t uint, got []byte, want any) bool {
	if w, ok := want.(bool); ok {
		return len(got) == 1 && (got[0] != 0) == w
	}
	if t == pkcs11.CKA_ALLOWED_MECHANISMS {
		ms, _ := parseMechList(want.([]byte))
		return sameMechs(got, ms)
	}
	return bytes.Equal(got, encoded(want))
}
