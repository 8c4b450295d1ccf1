package cms

import (
	"bytes"
	"encoding/pem"
)

// pemType is the PEM label OpenSSL uses for CMS (RFC 7468 §9).
const pemType = "CMS"

// Armor returns der PEM-encoded as "-----BEGIN CMS-----".
func Armor(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})
}

// Unarmor decodes a single PEM block of type CMS. Only whitespace may
// surround it. It reports false if data is not such a block. It holds the
// whole message in memory, so large messages should be kept as DER.
func Unarmor(data []byte) ([]byte, bool) {
	block, rest := pem.Decode(bytes.TrimLeft(data, " \t\r\n"))
	if block == nil || block.Type != pemType || len(block.Headers) != 0 ||
		len(bytes.TrimSpace(rest)) != 0 || !IsArmored(data) {
		return nil, false
	}
	return block.Bytes, true
}

// Format is the encoding of an input as told by its first bytes.
type Format int

const (
	// FormatUnknown is neither of the others.
	FormatUnknown Format = iota
	// FormatDER is binary DER or BER: it starts with a SEQUENCE tag.
	FormatDER
	// FormatPEM starts with "-----BEGIN CMS-----" after optional
	// whitespace.
	FormatPEM
)

var pemBegin = []byte("-----BEGIN " + pemType + "-----")

// IsArmored reports whether prefix starts, after optional whitespace, with
// "-----BEGIN CMS-----".
func IsArmored(prefix []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(prefix, " \t\r\n"), pemBegin)
}

// Sniff tells the format of an input from its first bytes; 32 bytes plus
// any leading whitespace are enough.
func Sniff(prefix []byte) Format {
	switch {
	case len(prefix) > 0 && prefix[0] == tagSequence:
		return FormatDER
	case IsArmored(prefix):
		return FormatPEM
	}
	return FormatUnknown
}
