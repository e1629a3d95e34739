"""The example app's factory under the pytest plugin: config in, emulators behind it."""

from example_app.server import create_app


def test_signup_is_reported_once(
    keen_signup_config, keen_signup_auth0, keen_signup_login, keen_signup_deliver, keen_signup_keen
):
    app = create_app(
        {
            **keen_signup_config,
            "SECRET_KEY": "test",
            "AUTH0_DOMAIN": keen_signup_auth0.domain,
            "AUTH0_SCHEME": "http",
        }
    )
    keen_signup_login(app.test_client(), "ada@example.com", name="Ada")
    keen_signup_login(app.test_client(), "ada@example.com")  # returning: no event
    keen_signup_deliver(app)
    assert [e["name"] for e in keen_signup_keen.events("signups")] == ["Ada"]
