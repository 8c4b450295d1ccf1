// Package cms encodes and parses the CMS messages hsmkeys writes: an
// AuthEnvelopedData (RFC 5083) with AES-GCM content encryption (RFC 5084)
// inside a ContentInfo (RFC 5652), as DER or, for streams of unknown length,
// indefinite-length BER, optionally PEM-armoured as "CMS".
//
// The package does no cryptography. The content-encryption key is a session
// key inside the HSM: the token wraps it for each recipient and computes the
// GCM ciphertext and tag. This package only lays out the bytes around them:
//
//   - [WriteHeader], [WriteChunk] and [WriteTrailer] write a message of any
//     size in bounded memory; [Marshal] builds a small one in memory.
//   - [Parse] reads the structure from an [io.ReaderAt] without loading the
//     encrypted content, which [Message.Content] then streams.
//   - [Header.AAD] gives the additional authenticated data the GCM operation
//     must be given (RFC 5083 §2.2).
//   - [MarshalManifest] and [ParseManifest] encode the content of an exported
//     key.
//
// Every parse error wraps [ErrMalformed] or [ErrUnsupported]; parsing never
// panics on bad input. Values of the types in this package are not safe for
// concurrent mutation; a parsed [Message] may be read concurrently, and each
// call to [Message.Content] returns an independent reader.
package cms
