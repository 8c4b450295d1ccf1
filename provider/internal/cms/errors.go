package cms

import (
	"errors"
	"fmt"
)

// Every error returned for bad input wraps exactly one of these. A
// *ContentTypeError, for input of another kind, wraps ErrUnsupported.
var (
	// ErrMalformed reports input that is not a well-formed message:
	// truncation, wrong tags or lengths, trailing data, or values that break
	// a MUST of the RFCs.
	ErrMalformed = errors.New("cms: malformed message")
	// ErrUnsupported reports a well-formed message this package does not
	// handle: an unknown content type, algorithm, recipient kind or version,
	// or a size beyond this package's limits.
	ErrUnsupported = errors.New("cms: unsupported message")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// ContentTypeError reports a well-formed ContentInfo (RFC 5652 §3) of
// another content type than AuthEnvelopedData: a signed or enveloped
// message, say, given where a message or key of ours was expected. It
// matches ErrUnsupported.
type ContentTypeError struct {
	// Name is the RFC 5652 name of the content type ("signed-data"), or
	// its dotted form when it is not one of those.
	Name string
	// OID is the content type in dotted form, or a description of an OID
	// beyond this package's limits.
	OID string
}

func (e *ContentTypeError) Error() string {
	if e.Name == e.OID {
		return fmt.Sprintf("cms: content type %s, not authEnvelopedData", e.OID)
	}
	return fmt.Sprintf("cms: a %s message (content type %s), not authEnvelopedData", e.Name, e.OID)
}

func (e *ContentTypeError) Is(target error) bool { return target == ErrUnsupported }

// contentTypeNames are the content types of RFC 5652 and its companions
// that a user may hand us by mistake.
var contentTypeNames = map[string]string{
	"1.2.840.113549.1.7.1":       "data",
	"1.2.840.113549.1.7.2":       "signed-data",
	"1.2.840.113549.1.7.3":       "enveloped-data",
	"1.2.840.113549.1.7.5":       "digested-data",
	"1.2.840.113549.1.7.6":       "encrypted-data",
	"1.2.840.113549.1.9.16.1.2":  "authenticated-data",
	"1.2.840.113549.1.9.16.1.9":  "compressed-data",
	"1.2.840.113549.1.9.16.1.23": "auth-enveloped-data",
	// The manifest is never the outer content type; named in case it is.
	OIDKeyManifest.String(): "hsmkeys key manifest",
}

func contentTypeError(der []byte) *ContentTypeError {
	s := oidString(der)
	name, ok := contentTypeNames[s]
	if !ok {
		name = s
	}
	return &ContentTypeError{Name: name, OID: s}
}
