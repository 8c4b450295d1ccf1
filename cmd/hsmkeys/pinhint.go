package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/hsmkeys/hsmkeys/provider"
)

// hints are the next steps for err, told for this invocation: a refused
// PIN is blamed on where the PIN came from (the prompt, a flag's file, a
// variable, the URI), not on every place it could have.
func (c *cli) hints(err error) []string {
	var pe *provider.PINError
	var h *hinted
	if errors.As(err, &pe) && !pe.Locked && !errors.As(err, &h) {
		return []string{c.pinHint(pe)}
	}
	return hints(err)
}

// pinHint follows the order in which userPIN and soPIN choose a source.
func (c *cli) pinHint(pe *provider.PINError) string {
	const counts = "; the token counts wrong tries"
	who, i := "user", 0
	if pe.SO {
		who, i = "SO", 1
	}
	if c.prompted[i].Load() {
		return fmt.Sprintf("the %s PIN typed at the prompt was refused: run the command again and type it carefully%s", who, counts)
	}
	if pe.SO {
		switch {
		case c.soPINFile != "":
			return fmt.Sprintf("check the SO PIN in %s (--so-pin-file)%s", c.soPINFile, counts)
		case os.Getenv("HSMKEYS_SO_PIN") != "":
			return "check HSMKEYS_SO_PIN" + counts
		case os.Getenv("HSMKEYS_SO_PIN_FILE") != "":
			return fmt.Sprintf("check the SO PIN in %s (HSMKEYS_SO_PIN_FILE)%s", os.Getenv("HSMKEYS_SO_PIN_FILE"), counts)
		}
		return "check the SO PIN" + counts
	}
	attrs := map[string]string{}
	if c.useURI() {
		attrs = uriAttrs(c.uri)
	}
	switch {
	case c.pinFile != "":
		return fmt.Sprintf("check the PIN in %s (--pin-file)%s", c.pinFile, counts)
	case attrs["pin-source"] != "":
		return fmt.Sprintf("check the PIN in the file the URI's pin-source names (%s)%s", attrs["pin-source"], counts)
	case attrs["pin-value"] != "":
		return "check the pin-value of the URI (HSMKEYS_URI)" + counts
	case os.Getenv("HSMKEYS_PIN") != "":
		return "check HSMKEYS_PIN" + counts
	case os.Getenv("HSMKEYS_PIN_FILE") != "":
		return fmt.Sprintf("check the PIN in %s (HSMKEYS_PIN_FILE)%s", os.Getenv("HSMKEYS_PIN_FILE"), counts)
	}
	return "check the user PIN" + counts
}
