package cms

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"slices"
)

// Algorithm identifiers. The values must not be modified.
var (
	// OIDAES128GCM and OIDAES256GCM are the content-encryption algorithms
	// (RFC 5084 §3.2).
	OIDAES128GCM = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 6}
	OIDAES256GCM = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}

	// AES key wrap (RFC 3394, in CMS RFC 3565) and AES key wrap with
	// padding (RFC 5649); the parameters are absent for all six.
	OIDAES128Wrap    = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 5}
	OIDAES192Wrap    = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 25}
	OIDAES256Wrap    = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 45}
	OIDAES128WrapPad = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 8}
	OIDAES192WrapPad = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 28}
	OIDAES256WrapPad = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 48}

	// OIDRSAESOAEP is id-RSAES-OAEP (RFC 4055 §4.1, in CMS RFC 3560).
	OIDRSAESOAEP = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
)

// Content and attribute types. They are x509.OID values because the
// project's own types live under the X.667 UUID arc 2.25, whose 128-bit
// arcs do not fit an asn1.ObjectIdentifier. The values must not be modified.
var (
	// OIDData is id-data (RFC 5652 §4).
	OIDData = mustOID("1.2.840.113549.1.7.1")
	// OIDAuthEnvelopedData is id-ct-authEnvelopedData (RFC 5083 §2.1).
	OIDAuthEnvelopedData = mustOID("1.2.840.113549.1.9.16.1.23")
	// OIDContentTypeAttr is the content-type attribute (RFC 5652 §11.1).
	OIDContentTypeAttr = mustOID("1.2.840.113549.1.9.3")

	// OIDKeyManifest is the type of an exported key's manifest, named inside
	// it (version 2), or as the content type of the message (version 1);
	// see [Manifest]. UUID 7b509bfc-48f1-4411-894f-41152b985703.
	OIDKeyManifest = mustOID("2.25.163913590991787551455053146951607932675")
	// OIDEncryptionContext is the attribute type of an encryption context;
	// see [EncryptionContextAttr]. UUID ab2ce60f-8631-4a7b-ae46-5330904106f7.
	OIDEncryptionContext = mustOID("2.25.227531114525158004698217346455094494967")
)

// DER contents (no tag or length) of the OIDs compared while parsing.
var (
	derAES128GCM     = oidDER(OIDAES128GCM)
	derAES256GCM     = oidDER(OIDAES256GCM)
	derRSAESOAEP     = oidDER(OIDRSAESOAEP)
	derSHA1          = oidDER(asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26})
	derSHA256        = oidDER(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1})
	derMGF1          = oidDER(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8})
	derPSpecified    = oidDER(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 9})
	derAuthEnveloped = mustBinary(OIDAuthEnvelopedData)
	derData          = mustBinary(OIDData)
	derContentType   = mustBinary(OIDContentTypeAttr)
	derEncContext    = mustBinary(OIDEncryptionContext)
	derKeyManifest   = mustBinary(OIDKeyManifest)
)

// wrapAlgs lists the supported KEK wrap algorithms with the length of the
// key-encryption key they take.
//
// The table owns its values: the OIDs are copies of the exported variables
// (which are slices, so a caller could change them) and the DER contents
// are strings, so nothing outside this file can alter what a message is
// checked against.
var wrapAlgs = []struct {
	oid    asn1.ObjectIdentifier
	der    string
	kekLen int
}{
	{slices.Clone(OIDAES128Wrap), string(oidDER(OIDAES128Wrap)), 16},
	{slices.Clone(OIDAES192Wrap), string(oidDER(OIDAES192Wrap)), 24},
	{slices.Clone(OIDAES256Wrap), string(oidDER(OIDAES256Wrap)), 32},
	{slices.Clone(OIDAES128WrapPad), string(oidDER(OIDAES128WrapPad)), 16},
	{slices.Clone(OIDAES192WrapPad), string(oidDER(OIDAES192WrapPad)), 24},
	{slices.Clone(OIDAES256WrapPad), string(oidDER(OIDAES256WrapPad)), 32},
}

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

func mustBinary(o x509.OID) []byte {
	b, err := o.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

func oidDER(o asn1.ObjectIdentifier) []byte {
	x, err := x509.OIDFromASN1OID(o)
	if err != nil {
		panic(err)
	}
	return mustBinary(x)
}

// Limits on the object identifiers read from input. Every OID this
// package knows has fewer than 32 octets and arcs below 2^129 (the UUID
// arcs under 2.25, X.667). Formatting an arc in decimal costs time
// quadratic in its length, so longer ones are refused before anything
// formats or converts them (issue 12: a 900 KiB arc took 33 s).
const (
	maxOIDLen = 64 // octets of contents
	maxArcLen = 20 // base-128 octets of one arc (arcs below 2^140)
)

// checkOID checks the contents of an OBJECT IDENTIFIER (X.690 §8.19)
// against the limits above and for a well-formed base-128 encoding; what
// names it in the error.
func checkOID(what string, der []byte) error {
	if len(der) == 0 {
		return malformed("%s: empty object identifier", what)
	}
	if len(der) > maxOIDLen {
		return unsupported("%s: object identifier of %d octets (at most %d)", what, len(der), maxOIDLen)
	}
	arc := 0
	for i, c := range der {
		if arc == 0 && c == 0x80 {
			return malformed("%s: object identifier arc with a leading zero octet", what)
		}
		arc++
		if arc > maxArcLen {
			return unsupported("%s: object identifier arc of more than %d octets", what, maxArcLen)
		}
		if c&0x80 == 0 {
			arc = 0
		} else if i == len(der)-1 {
			return malformed("%s: truncated object identifier", what)
		}
	}
	return nil
}

// oidFromDER converts the contents of an OBJECT IDENTIFIER to an x509.OID.
// Callers that must tell a refused size from bad DER use checkOID.
func oidFromDER(der []byte) (x509.OID, bool) {
	if checkOID("", der) != nil {
		return x509.OID{}, false
	}
	var o x509.OID
	if err := o.UnmarshalBinary(der); err != nil {
		return x509.OID{}, false
	}
	return o, true
}

// oidString formats OID contents for an error message, in time linear in
// their length: OIDs beyond the limits are described, not formatted.
func oidString(der []byte) string {
	if checkOID("", der) == nil {
		if o, ok := oidFromDER(der); ok {
			return o.String()
		}
	}
	if len(der) > 16 {
		return fmt.Sprintf("(an object identifier of %d octets starting %x)", len(der), der[:16])
	}
	return fmt.Sprintf("(an object identifier %x)", der)
}

// oidContents returns the DER contents of o, or nil if o is the zero OID.
func oidContents(o x509.OID) []byte {
	b, err := o.MarshalBinary()
	if err != nil || len(b) == 0 {
		return nil
	}
	return b
}

// contentTypeDER returns the DER contents of a content type, reading the
// zero OID as id-data.
func contentTypeDER(o x509.OID) []byte {
	if b := oidContents(o); b != nil {
		return b
	}
	return derData
}
