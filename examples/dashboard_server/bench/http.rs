//! One keep-alive HTTP/1.1 connection to a bench server: a plain hyper
//! client, as a closed-loop client or a metrics scraper holds it.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Connection {
    port: u16,
    sender: SendRequest<Empty<Bytes>>,
}

impl Connection {
    /// Connects to 127.0.0.1:`port`.
    pub async fn open(port: u16) -> Result<Self, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with 127.0.0.1:{port}: {e}"))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server hangs up; a
            // failure shows on the next request.
            let _ = connection.await;
        });
        Ok(Self { port, sender })
    }

    /// `GET path`, with `token` as a bearer token when given: the status
    /// and the whole body.
    pub async fn get(
        &mut self,
        path: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request =
            Request::get(path).header(header::HOST, format!("127.0.0.1:{}", self.port));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path}: reading the body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}
