package cms

import (
	"bytes"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Manifest describes an exported key. It is the content of the message
// that carries the key, encrypted under the key itself. Its DER encoding is
//
//	KeyManifest ::= SEQUENCE {
//	  type     OBJECT IDENTIFIER,  -- OIDKeyManifest; version 2 only
//	  version  INTEGER,            -- 2 (1: without type)
//	  keyAlg   UTF8String,         -- "aes128" | "aes256"
//	  keyBits  INTEGER,            -- 128 | 256, as keyAlg says
//	  kcv      OCTET STRING (SIZE (3)),
//	  created  GeneralizedTime,    -- UTC, whole seconds: YYYYMMDDHHMMSSZ
//	  policy   UTF8String,         -- "trusted" | "none"
//	  keyID    OCTET STRING (SIZE (16)) }
//
// Version 2 names its own type, so that an exported key can be an id-data
// message without authAttrs, which OpenSSL before 3.0.22 can open
// (openssl#26101); RFC 5083 §2.1 requires authAttrs for any other content
// type. Version 1, written until then, had no type: it was identified by
// the message's content type OIDKeyManifest (and its authAttrs).
type Manifest struct {
	// Version is ManifestVersion, or ManifestVersionLegacy for the form
	// without type.
	Version int
	// KeyAlg is KeyAlgAES128 or KeyAlgAES256.
	KeyAlg string
	// KeyBits is 128 or 256, matching KeyAlg.
	KeyBits int
	// KCV is the 3-byte key check value.
	KCV []byte
	// Created is when the key was generated. MarshalManifest stores it in
	// UTC to the second; ParseManifest returns it in UTC.
	Created time.Time
	// Policy is PolicyTrusted or PolicyNone.
	Policy string
	// KeyID is the random 16-byte identifier of the key.
	KeyID []byte
}

// Values of Manifest fields.
const (
	ManifestVersion       = 2
	ManifestVersionLegacy = 1

	KeyAlgAES128 = "aes128"
	KeyAlgAES256 = "aes256"

	PolicyTrusted = "trusted"
	PolicyNone    = "none"
)

const (
	kcvLen   = 3
	keyIDLen = 16
)

func (m *Manifest) check() error {
	if m.Version != ManifestVersion && m.Version != ManifestVersionLegacy {
		return unsupported("manifest version %d", m.Version)
	}
	switch {
	case m.KeyAlg == KeyAlgAES128 && m.KeyBits == 128:
	case m.KeyAlg == KeyAlgAES256 && m.KeyBits == 256:
	case m.KeyAlg != KeyAlgAES128 && m.KeyAlg != KeyAlgAES256:
		return unsupported("key algorithm %q", m.KeyAlg)
	default:
		return malformed("%d-bit key for algorithm %q", m.KeyBits, m.KeyAlg)
	}
	if m.Policy != PolicyTrusted && m.Policy != PolicyNone {
		return unsupported("key policy %q", m.Policy)
	}
	if len(m.KCV) != kcvLen {
		return malformed("key check value of %d bytes", len(m.KCV))
	}
	if len(m.KeyID) != keyIDLen {
		return malformed("key ID of %d bytes", len(m.KeyID))
	}
	if c := m.Created.UTC(); m.Created.IsZero() || c.Year() < 1 || c.Year() > 9999 {
		return malformed("creation time %v out of range", m.Created)
	}
	return nil
}

// MarshalManifest returns the DER encoding of m. Errors wrap ErrUnsupported
// for unknown versions, algorithms or policies and ErrMalformed for other
// invalid fields.
func MarshalManifest(m *Manifest) ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	created := m.Created.UTC().Truncate(time.Second)
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		if m.Version != ManifestVersionLegacy {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(derKeyManifest) })
		}
		b.AddASN1Int64(int64(m.Version))
		addUTF8(b, m.KeyAlg)
		b.AddASN1Int64(int64(m.KeyBits))
		b.AddASN1OctetString(m.KCV)
		b.AddASN1(cbasn1.GeneralizedTime, func(b *cryptobyte.Builder) {
			b.AddBytes([]byte(created.Format(generalizedTime)))
		})
		addUTF8(b, m.Policy)
		b.AddASN1OctetString(m.KeyID)
	})
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("cms: encoding manifest: %w", err)
	}
	return out, nil
}

// generalizedTime is the only form of GeneralizedTime accepted: DER, UTC,
// no fractional seconds (X.690 §11.7).
const generalizedTime = "20060102150405Z"

// ParseManifest parses the DER encoding of a Manifest strictly: no
// trailing data, no other encoding than MarshalManifest's.
func ParseManifest(der []byte) (*Manifest, error) {
	s := cryptobyte.String(der)
	var seq cryptobyte.String
	if !s.ReadASN1(&seq, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, malformed("bad manifest")
	}
	m := &Manifest{}
	typed := seq.PeekASN1Tag(cbasn1.OBJECT_IDENTIFIER)
	if typed {
		var t cryptobyte.String
		if !seq.ReadASN1(&t, cbasn1.OBJECT_IDENTIFIER) {
			return nil, malformed("bad manifest type")
		}
		if !bytes.Equal(t, derKeyManifest) {
			return nil, unsupported("manifest type is not the hsmkeys key manifest")
		}
	}
	if !seq.ReadASN1Integer(&m.Version) {
		return nil, malformed("bad manifest version")
	}
	if typed && m.Version != ManifestVersion || !typed && m.Version != ManifestVersionLegacy {
		return nil, unsupported("manifest version %d", m.Version)
	}
	var alg, policy, created []byte
	if !seq.ReadASN1Bytes(&alg, cbasn1.UTF8String) ||
		!seq.ReadASN1Integer(&m.KeyBits) ||
		!seq.ReadASN1Bytes(&m.KCV, cbasn1.OCTET_STRING) ||
		!seq.ReadASN1Bytes(&created, cbasn1.GeneralizedTime) ||
		!seq.ReadASN1Bytes(&policy, cbasn1.UTF8String) ||
		!seq.ReadASN1Bytes(&m.KeyID, cbasn1.OCTET_STRING) ||
		!seq.Empty() {
		return nil, malformed("bad manifest")
	}
	m.KeyAlg, m.Policy = string(alg), string(policy)
	t, err := time.Parse(generalizedTime, string(created))
	if err != nil || t.Format(generalizedTime) != string(created) {
		return nil, malformed("bad manifest creation time")
	}
	m.Created = t.UTC()
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

func addUTF8(b *cryptobyte.Builder, s string) {
	b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(s)) })
}

// IsManifestLen reports whether n is the length of a version 2 manifest
// (one per policy: every other field has a fixed size). Inspect uses it to
// guess, without the key, that an id-data message is an exported key.
func IsManifestLen(n int64) bool {
	return n == manifestLens[0] || n == manifestLens[1]
}

var manifestLens = func() [2]int64 {
	var ls [2]int64
	for i, p := range []string{PolicyTrusted, PolicyNone} {
		der, err := MarshalManifest(&Manifest{Version: ManifestVersion, KeyAlg: KeyAlgAES256, KeyBits: 256,
			KCV: make([]byte, kcvLen), Created: time.Unix(0, 0), Policy: p, KeyID: make([]byte, keyIDLen)})
		if err != nil {
			panic(err)
		}
		ls[i] = int64(len(der))
	}
	return ls
}()
