//! The layer on its own, around a service of the application's: it authorizes by pushpull's
//! paths and hands the handler the request's grant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use pushpull_auth::{AuthConfig, AuthLayer, Grant, KeyConfig};
use pushpull_http::{Route, Router, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_layer::Layer;

const SECRET: &str = "a shared secret of at least thirty-two bytes";

fn token(subscribe: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60;
    let claims =
        serde_json::json!({ "sub": "u1", "exp": exp, "pushpull": { "subscribe": subscribe } });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    (status, reply)
}

#[tokio::test]
async fn the_layer_guards_an_application_service_and_hands_on_the_grant() {
    // The application's own route, following pushpull's path for reading a topic.
    let route =
        Route::new(Method::GET, "/v1/topics/{topic}/summary", |request, params| async move {
            let who = Grant::of(&request).and_then(|g| g.subject.clone()).unwrap_or_default();
            let body =
                format!("{{\"topic\":\"{}\",\"for\":\"{who}\"}}", params.get("topic").unwrap());
            Ok(pushpull_http::json(StatusCode::OK, body.into_bytes()))
        });
    let config = {
        let mut built = AuthConfig::default();
        built.keys = vec![KeyConfig::hs256(None, SECRET)];
        built
    };
    let service = AuthLayer::new(&config).unwrap().layer(Router::new().with([route]));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http::spawn(listener, service, ServeConfig::default()).unwrap();
    let addr = server.local_addr();

    let (status, reply) = get(addr, "/v1/topics/orders/summary", None).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("www-authenticate: Bearer realm=\"pushpull\""), "{reply}");
    let (status, reply) = get(addr, "/v1/topics/orders/summary", Some(&token(&["news"]))).await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains("insufficient_scope"), "{reply}");
    let (status, reply) = get(addr, "/v1/topics/orders/summary", Some(&token(&["orders"]))).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"for\":\"u1\""), "the handler saw the grant: {reply}");
    // Open routes stay open.
    let (status, _) = get(addr, "/v1/health", None).await;
    assert_eq!(status, 404, "passed through to the service, which has no such route");
}

#[tokio::test]
async fn anonymous_rights_open_some_topics_to_requests_without_a_token() {
    let route = Route::new(Method::GET, "/v1/topics/{topic}/summary", |_, _| async {
        Ok(pushpull_http::json(StatusCode::OK, b"{}".to_vec()))
    });
    let config = {
        let mut built = AuthConfig::default();
        built.keys = vec![KeyConfig::hs256(None, SECRET)];
        built.anonymous =
            pushpull_auth::Rights { subscribe: vec!["public:*".into()], ..Default::default() };
        built
    };
    let service = AuthLayer::new(&config).unwrap().layer(Router::new().with([route]));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http::spawn(listener, service, ServeConfig::default()).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/v1/topics/public:news/summary", None).await.0, 200);
    let (status, reply) = get(addr, "/v1/topics/private/summary", None).await;
    assert_eq!(status, 401, "without a token and without an anonymous right: {reply}");
    assert!(reply.contains("www-authenticate: Bearer realm=\"pushpull\"\r\n"), "{reply}");
    // A bad token is still refused, anonymous rights or not.
    assert_eq!(get(addr, "/v1/topics/public:news/summary", Some("not.a.token")).await.0, 401);
}
