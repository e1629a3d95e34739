def test_a_new_user_is_reported_once(
    keen_signup_import, keen_signup_login, keen_signup_deliver, keen_signup_keen
):
    app = keen_signup_import("server").app  # Auth0's quickstart, imported as written

    keen_signup_login(app.test_client(), "ada@example.com", name="Ada")
    keen_signup_login(app.test_client(), "ada@example.com")  # returning: no new event
    keen_signup_deliver(app)

    assert [event["name"] for event in keen_signup_keen.events("signups")] == ["Ada"]
