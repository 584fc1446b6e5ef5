// A Go net/http server with TLS, for the watch tests: Go's own crypto/tls, not
// OpenSSL, so its plaintext cannot be read and its connections are skipped as
// "tls". /slow answers after 5 s, anything else at once.
// Arguments: CERT KEY. Prints its port on the first line of stdout.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(5 * time.Second)
		}
		fmt.Fprintln(w, "ok")
	})
	server := &http.Server{Handler: handler}
	if err := server.ServeTLS(listener, os.Args[1], os.Args[2]); err != nil {
		panic(err)
	}
}
