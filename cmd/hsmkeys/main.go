// Command hsmkeys manages session keys and key-encryption keys on a PKCS#11
// token. Run "hsmkeys help" for the commands.
package main

import (
	"os"
)

func main() {
	noCoreDumps() // before any PIN is read (issue 11: no PIN in a core dump)
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
