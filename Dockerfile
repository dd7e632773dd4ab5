# routerd and the demo in one small image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/routerd ./cmd/routerd \
 && CGO_ENABLED=0 go build -trimpath -o /out/routerd-demo ./examples/demo

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
COPY matrix.yaml /etc/routerd/matrix.yaml
ENTRYPOINT ["/usr/local/bin/routerd"]
CMD ["help"]
