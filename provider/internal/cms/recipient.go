package cms

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// A Recipient is one RecipientInfo (RFC 5652 §6.2): a [*KEKRecipient] or a
// [*KeyTransRecipient].
type Recipient interface {
	// marshal appends the RecipientInfo; cekLen is the length of the
	// content-encryption key in bytes.
	marshal(b *cryptobyte.Builder, cekLen int) error
}

// OtherRecipient is a well-formed RecipientInfo this package does not
// handle (key agreement, password, an issuer-and-serial KTRI, ...). Parse
// keeps it, so that a message with one recipient we can use and others we
// cannot still opens; Marshal writes it back as it was.
type OtherRecipient struct {
	// Reason says why it is not handled.
	Reason string
	// Raw is the DER of the RecipientInfo.
	Raw []byte
}

func (r *OtherRecipient) marshal(b *cryptobyte.Builder, _ int) error {
	if len(r.Raw) == 0 {
		return malformed("empty other recipient")
	}
	b.AddBytes(r.Raw)
	return nil
}

// KEKRecipient is a KEKRecipientInfo (RFC 5652 §6.2.3): the
// content-encryption key wrapped under a symmetric key-encryption key.
type KEKRecipient struct {
	// KeyID is kekid.keyIdentifier, naming the key-encryption key.
	KeyID []byte
	// WrapAlg is one of OIDAES128Wrap, OIDAES192Wrap, OIDAES256Wrap
	// (RFC 3394/3565) or OIDAES128WrapPad, OIDAES192WrapPad,
	// OIDAES256WrapPad (RFC 5649).
	WrapAlg asn1.ObjectIdentifier
	// EncryptedKey is the wrapped content-encryption key.
	EncryptedKey []byte
}

// KeyTransRecipient is a KeyTransRecipientInfo (RFC 5652 §6.2.1) naming
// its RSA key by subject key identifier, with the content-encryption key
// encrypted under RSAES-OAEP (RFC 3560).
type KeyTransRecipient struct {
	// SubjectKeyID identifies the recipient's key, as in the
	// subjectKeyIdentifier extension of its certificate; see SubjectKeyID.
	SubjectKeyID []byte
	// Hash is the OAEP hash and MGF1 hash: crypto.SHA1 or crypto.SHA256.
	Hash crypto.Hash
	// EncryptedKey is the RSAES-OAEP ciphertext of the content-encryption
	// key, with an empty label.
	EncryptedKey []byte
}

// SubjectKeyID returns the key identifier of pub computed by RFC 5280
// §4.2.1.2 method 1: the SHA-1 hash of the subjectPublicKey BIT STRING
// contents. It is what OpenSSL puts in a certificate's subjectKeyIdentifier
// by default. It returns nil if pub is nil.
func SubjectKeyID(pub *rsa.PublicKey) []byte {
	if pub == nil {
		return nil
	}
	// For RSA the BIT STRING holds the PKCS #1 RSAPublicKey (RFC 3279 §2.3.1).
	sum := sha1.Sum(x509.MarshalPKCS1PublicKey(pub))
	return sum[:]
}

// Limits on recipient fields, far beyond any real key.
const (
	maxKeyIDLen        = 1024
	maxEncryptedKeyLen = 2048 // RSA-16384
)

func (r *KEKRecipient) marshal(b *cryptobyte.Builder, cekLen int) error {
	if len(r.KeyID) == 0 || len(r.KeyID) > maxKeyIDLen {
		return fmt.Errorf("cms: KEK recipient key ID length %d out of range", len(r.KeyID))
	}
	if wrapAlgIndex(oidDERorNil(r.WrapAlg)) < 0 {
		return fmt.Errorf("cms: unsupported key wrap algorithm %v", r.WrapAlg)
	}
	// Both RFC 3394 and RFC 5649 add 8 bytes to a key that is a multiple
	// of 8 bytes long.
	if len(r.EncryptedKey) != cekLen+8 {
		return fmt.Errorf("cms: wrapped key is %d bytes, want %d", len(r.EncryptedKey), cekLen+8)
	}
	// kekri [2] IMPLICIT KEKRecipientInfo
	b.AddASN1(cbasn1.Tag(2).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
		b.AddASN1Int64(4)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1OctetString(r.KeyID)
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(r.WrapAlg) // parameters absent (RFC 3565 §2.3.2, RFC 5649 §3)
		})
		b.AddASN1OctetString(r.EncryptedKey)
	})
	return nil
}

func (r *KeyTransRecipient) marshal(b *cryptobyte.Builder, cekLen int) error {
	if len(r.SubjectKeyID) == 0 || len(r.SubjectKeyID) > maxKeyIDLen {
		return fmt.Errorf("cms: subject key identifier length %d out of range", len(r.SubjectKeyID))
	}
	if r.Hash != crypto.SHA1 && r.Hash != crypto.SHA256 {
		return fmt.Errorf("cms: unsupported RSAES-OAEP hash %v", r.Hash)
	}
	if len(r.EncryptedKey) == 0 || len(r.EncryptedKey) > maxEncryptedKeyLen {
		return fmt.Errorf("cms: RSA encrypted key length %d out of range", len(r.EncryptedKey))
	}
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(2) // version 2: rid is a subjectKeyIdentifier
		b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddBytes(r.SubjectKeyID)
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(OIDRSAESOAEP)
			addOAEPParams(b, r.Hash)
		})
		b.AddASN1OctetString(r.EncryptedKey)
	})
	return nil
}

// addOAEPParams appends RSAES-OAEP-params (RFC 4055 §4.1). With SHA-1
// every field takes its default, so DER leaves the SEQUENCE empty. With
// SHA-256 hashFunc and maskGenFunc are given; pSourceFunc stays default.
// The hash AlgorithmIdentifiers carry NULL parameters as RFC 4055 §2.1
// asks (OpenSSL omits them; both forms are accepted on parse).
func addOAEPParams(b *cryptobyte.Builder, h crypto.Hash) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		if h == crypto.SHA1 {
			return
		}
		sha256ID := func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(derSHA256) })
				b.AddASN1NULL()
			})
		}
		b.AddASN1(cbasn1.Tag(0).ContextSpecific().Constructed(), sha256ID)
		b.AddASN1(cbasn1.Tag(1).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(derMGF1) })
				sha256ID(b)
			})
		})
	})
}

// parseRecipient parses one RecipientInfo, the whole TLV in s.
func parseRecipient(s cryptobyte.String) (Recipient, error) {
	var body cryptobyte.String
	var tag cbasn1.Tag
	if !s.ReadAnyASN1(&body, &tag) || !s.Empty() {
		return nil, malformed("bad RecipientInfo")
	}
	switch tag {
	case cbasn1.SEQUENCE:
		return parseKeyTrans(body)
	case cbasn1.Tag(2).ContextSpecific().Constructed():
		return parseKEK(body)
	case cbasn1.Tag(1).ContextSpecific().Constructed():
		return nil, unsupported("key agreement recipient")
	case cbasn1.Tag(3).ContextSpecific().Constructed():
		return nil, unsupported("password recipient")
	case cbasn1.Tag(4).ContextSpecific().Constructed():
		return nil, unsupported("other recipient")
	}
	return nil, unsupported("recipient with tag 0x%02x", uint8(tag))
}

func parseKEK(s cryptobyte.String) (*KEKRecipient, error) {
	var version int
	if !s.ReadASN1Integer(&version) {
		return nil, malformed("bad KEKRecipientInfo version")
	}
	if version != 4 {
		return nil, unsupported("KEKRecipientInfo version %d", version)
	}
	var kekid, alg cryptobyte.String
	r := &KEKRecipient{}
	if !s.ReadASN1(&kekid, cbasn1.SEQUENCE) ||
		!kekid.ReadASN1Bytes(&r.KeyID, cbasn1.OCTET_STRING) {
		return nil, malformed("bad KEKIdentifier")
	}
	if !kekid.Empty() {
		return nil, unsupported("KEKIdentifier with date or other attribute")
	}
	if len(r.KeyID) == 0 || len(r.KeyID) > maxKeyIDLen {
		return nil, unsupported("KEK identifier length %d", len(r.KeyID))
	}
	var algOID []byte
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1Bytes(&algOID, cbasn1.OBJECT_IDENTIFIER) {
		return nil, malformed("bad key wrap algorithm")
	}
	i := wrapAlgIndex(algOID)
	if i < 0 {
		return nil, unsupported("key wrap algorithm %s", oidString(algOID))
	}
	if !alg.Empty() {
		return nil, malformed("key wrap algorithm with parameters")
	}
	r.WrapAlg = slices.Clone(wrapAlgs[i].oid) // callers own what Parse returns
	if !s.ReadASN1Bytes(&r.EncryptedKey, cbasn1.OCTET_STRING) || !s.Empty() {
		return nil, malformed("bad KEKRecipientInfo encryptedKey")
	}
	return r, nil
}

func parseKeyTrans(s cryptobyte.String) (*KeyTransRecipient, error) {
	var version int
	if !s.ReadASN1Integer(&version) {
		return nil, malformed("bad KeyTransRecipientInfo version")
	}
	switch version {
	case 2:
	case 0:
		return nil, unsupported("key transport recipient named by issuer and serial number")
	default:
		return nil, unsupported("KeyTransRecipientInfo version %d", version)
	}
	r := &KeyTransRecipient{}
	if !s.ReadASN1Bytes(&r.SubjectKeyID, cbasn1.Tag(0).ContextSpecific()) {
		return nil, malformed("bad KeyTransRecipientInfo rid")
	}
	if len(r.SubjectKeyID) == 0 || len(r.SubjectKeyID) > maxKeyIDLen {
		return nil, unsupported("subject key identifier length %d", len(r.SubjectKeyID))
	}
	var alg cryptobyte.String
	var algOID []byte
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1Bytes(&algOID, cbasn1.OBJECT_IDENTIFIER) {
		return nil, malformed("bad key encryption algorithm")
	}
	if !bytes.Equal(algOID, derRSAESOAEP) {
		return nil, unsupported("key encryption algorithm %s", oidString(algOID))
	}
	var params cryptobyte.String
	if !alg.ReadASN1(&params, cbasn1.SEQUENCE) || !alg.Empty() {
		return nil, malformed("bad RSAES-OAEP parameters")
	}
	h, err := parseOAEPParams(params)
	if err != nil {
		return nil, err
	}
	r.Hash = h
	if !s.ReadASN1Bytes(&r.EncryptedKey, cbasn1.OCTET_STRING) || !s.Empty() {
		return nil, malformed("bad KeyTransRecipientInfo encryptedKey")
	}
	if len(r.EncryptedKey) == 0 || len(r.EncryptedKey) > maxEncryptedKeyLen {
		return nil, unsupported("RSA encrypted key length %d", len(r.EncryptedKey))
	}
	return r, nil
}

// parseOAEPParams parses the contents of RSAES-OAEP-params (RFC 4055 §4.1):
//
//	RSAES-OAEP-params ::= SEQUENCE {
//	  hashFunc    [0] AlgorithmIdentifier DEFAULT sha1Identifier,
//	  maskGenFunc [1] AlgorithmIdentifier DEFAULT mgf1SHA1Identifier,
//	  pSourceFunc [2] AlgorithmIdentifier DEFAULT pSpecifiedEmptyIdentifier }
//
// Defaults spelt out explicitly are accepted.
func parseOAEPParams(s cryptobyte.String) (crypto.Hash, error) {
	hash, mgfHash := crypto.SHA1, crypto.SHA1
	var f cryptobyte.String
	var present bool
	if !s.ReadOptionalASN1(&f, &present, cbasn1.Tag(0).ContextSpecific().Constructed()) {
		return 0, malformed("bad RSAES-OAEP hashFunc")
	}
	if present {
		var err error
		if hash, err = parseHashAlg(f); err != nil {
			return 0, err
		}
	}
	if !s.ReadOptionalASN1(&f, &present, cbasn1.Tag(1).ContextSpecific().Constructed()) {
		return 0, malformed("bad RSAES-OAEP maskGenFunc")
	}
	if present {
		var mgf, oid cryptobyte.String
		if !f.ReadASN1(&mgf, cbasn1.SEQUENCE) || !f.Empty() ||
			!mgf.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
			return 0, malformed("bad RSAES-OAEP maskGenFunc")
		}
		if !bytes.Equal(oid, derMGF1) {
			return 0, unsupported("mask generation function %s", oidString(oid))
		}
		var err error
		if mgfHash, err = parseHashAlg(mgf); err != nil {
			return 0, err
		}
	}
	if !s.ReadOptionalASN1(&f, &present, cbasn1.Tag(2).ContextSpecific().Constructed()) {
		return 0, malformed("bad RSAES-OAEP pSourceFunc")
	}
	if present {
		var ps, oid cryptobyte.String
		var label []byte
		if !f.ReadASN1(&ps, cbasn1.SEQUENCE) || !f.Empty() ||
			!ps.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
			return 0, malformed("bad RSAES-OAEP pSourceFunc")
		}
		if !bytes.Equal(oid, derPSpecified) || !ps.ReadASN1Bytes(&label, cbasn1.OCTET_STRING) || !ps.Empty() || len(label) != 0 {
			return 0, unsupported("RSAES-OAEP label")
		}
	}
	if !s.Empty() {
		return 0, malformed("trailing data in RSAES-OAEP parameters")
	}
	if hash != mgfHash {
		return 0, unsupported("RSAES-OAEP with different hash and MGF1 hash")
	}
	return hash, nil
}

// parseHashAlg parses a hash AlgorithmIdentifier, whose contents s holds
// with its SEQUENCE tag; NULL and absent parameters are equivalent
// (RFC 4055 §2.1).
func parseHashAlg(s cryptobyte.String) (crypto.Hash, error) {
	var alg, oid cryptobyte.String
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !s.Empty() || !alg.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
		return 0, malformed("bad hash algorithm")
	}
	if alg.PeekASN1Tag(cbasn1.NULL) {
		var null cryptobyte.String
		if !alg.ReadASN1(&null, cbasn1.NULL) || !null.Empty() {
			return 0, malformed("bad hash algorithm parameters")
		}
	}
	if !alg.Empty() {
		return 0, malformed("bad hash algorithm parameters")
	}
	switch {
	case bytes.Equal(oid, derSHA1):
		return crypto.SHA1, nil
	case bytes.Equal(oid, derSHA256):
		return crypto.SHA256, nil
	}
	return 0, unsupported("hash algorithm %s", oidString(oid))
}

func wrapAlgIndex(der []byte) int {
	if der == nil {
		return -1
	}
	for i, a := range wrapAlgs {
		if string(der) == a.der { // no allocation: the compiler compares in place
			return i
		}
	}
	return -1
}

// oidDERorNil is oidDER for values that come from callers.
func oidDERorNil(o asn1.ObjectIdentifier) []byte {
	x, err := x509.OIDFromASN1OID(o)
	if err != nil {
		return nil
	}
	b, _ := x.MarshalBinary()
	return b
}

var errNoRecipients = errors.New("cms: no recipients")
