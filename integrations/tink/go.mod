module github.com/hsmkeys/hsmkeys/integrations/tink

go 1.26.0

require (
	github.com/hsmkeys/hsmkeys v0.0.0
	github.com/stretchr/testify v1.12.1
	github.com/tink-crypto/tink-go/v2 v2.9.0
)

require (
	github.com/miekg/pkcs11 v1.1.2 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)

replace github.com/hsmkeys/hsmkeys => ../..
