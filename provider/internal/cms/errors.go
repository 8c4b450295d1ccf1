package cms

import (
	"errors"
	"fmt"
)

// Every error returned for bad input wraps exactly one of these.
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
