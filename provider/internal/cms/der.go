package cms

// Hand-rolled tag/length handling for the outer structures, whose lengths
// exceed what cryptobyte handles (4 GiB) and which may use BER
// indefinite lengths. Small inner structures go through cryptobyte, which
// enforces DER.

// Identifier octets used here (X.690 §8.1.2).
const (
	tagEOC            = 0x00
	tagInteger        = 0x02
	tagOctetString    = 0x04
	tagOctetStringCon = 0x24
	tagOID            = 0x06
	tagSequence       = 0x30
	tagSet            = 0x31
	tagCtx0Prim       = 0x80 // [0] IMPLICIT OCTET STRING, primitive
	tagCtx0Con        = 0xa0 // [0] constructed
	tagCtx1Con        = 0xa1 // [1] constructed
	tagCtx2Con        = 0xa2 // [2] constructed
)

// lengthLen returns the number of octets the DER length n takes.
func lengthLen(n int64) int64 {
	if n < 0x80 {
		return 1
	}
	l := int64(1)
	for ; n > 0; n >>= 8 {
		l++
	}
	return l
}

// tlvLen returns the size of a definite-length TLV whose contents are n
// octets long.
func tlvLen(n int64) int64 { return 1 + lengthLen(n) + n }

// appendHeader appends a tag and a DER length, or the indefinite-length
// marker when n < 0.
func appendHeader(b []byte, tag byte, n int64) []byte {
	b = append(b, tag)
	switch {
	case n < 0:
		return append(b, 0x80)
	case n < 0x80:
		return append(b, byte(n))
	}
	l := lengthLen(n) - 1
	b = append(b, 0x80|byte(l))
	for i := l - 1; i >= 0; i-- {
		b = append(b, byte(n>>(8*i)))
	}
	return b
}

// appendTLV appends a definite-length TLV.
func appendTLV(b []byte, tag byte, contents []byte) []byte {
	return append(appendHeader(b, tag, int64(len(contents))), contents...)
}
