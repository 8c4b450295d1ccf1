//go:build !unix

package provider

import "context"

// lockKEKNames locks nothing where flock(2) does not exist; createVersion's
// rival check is all there is.
func lockKEKNames(ctx context.Context, serial string) (func(), error) { return func() {}, nil }
