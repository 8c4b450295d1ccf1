// Command hsmkeys manages session keys and key-encryption keys on a PKCS#11
// token. Run "hsmkeys help" for the commands.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
