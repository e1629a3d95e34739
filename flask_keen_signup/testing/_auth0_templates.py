"""HTML of the Auth0 emulator: the login / sign-up form and the error page.

A real person uses the form in the offline demo, so it is plain, accessible HTML: one form,
labelled fields, one button, the error announced to screen readers, no JavaScript, no
external assets. Templates are rendered with Flask's Jinja, which escapes every value.
"""

from __future__ import annotations

import typing as t

from flask import render_template_string

_STYLE = """
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f4f4f6;
         color: #1e212a; margin: 0; }
  main { max-width: 24rem; margin: 4rem auto; background: #fff; padding: 2rem 2.25rem;
         border-radius: 8px; box-shadow: 0 4px 16px rgba(0,0,0,.08); }
  h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
  p.lead { margin: 0 0 1.5rem; color: #555; }
  label { display: block; font-weight: 600; margin: 1rem 0 .35rem; }
  label span { font-weight: 400; color: #666; }
  input { width: 100%; box-sizing: border-box; padding: .65rem .75rem; font-size: 1rem;
          border: 1px solid #c9cace; border-radius: 4px; }
  input:focus { outline: 3px solid #635dff55; border-color: #635dff; }
  button { margin-top: 1.5rem; width: 100%; padding: .75rem; font-size: 1rem; font-weight: 600;
           color: #fff; background: #635dff; border: 0; border-radius: 4px; cursor: pointer; }
  button:focus { outline: 3px solid #1e212a; }
  .error { background: #fde8e8; color: #8a1111; border-left: 4px solid #d03c38;
           padding: .6rem .8rem; margin: 0 0 1rem; }
  .hint { font-size: .85rem; color: #666; margin-top: 1.25rem; }
  code { background: #f0f0f3; padding: 0 .25rem; border-radius: 3px; }
"""

_LOGIN = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} | Auth0 emulator</title>
<style>{{ style }}</style>
</head>
<body>
<main>
  <h1>{{ title }}</h1>
  <p class="lead">to continue to {{ client_name }}</p>
  {% if error %}<p class="error" role="alert" id="form-error">{{ error }}</p>{% endif %}
  <form method="post" action="{{ action }}"
        {% if error %}aria-describedby="form-error"{% endif %}>
    <label for="email">Email address</label>
    <input id="email" name="email" type="email" autocomplete="username" required
           value="{{ email }}" {% if not email %}autofocus{% endif %}>
    <label for="password">Password</label>
    <input id="password" name="password" type="password" required
           autocomplete="{{ 'new-password' if signup else 'current-password' }}"
           {% if email %}autofocus{% endif %}>
    <label for="name">Name <span>(optional, used when you sign up)</span></label>
    <input id="name" name="name" type="text" autocomplete="name" value="{{ name }}">
    <button type="submit">Continue</button>
  </form>
  <p class="hint">Local Auth0 emulator. A new email address signs you up;
     a known one logs you in.</p>
</main>
</body>
</html>
"""

_ERROR = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Error | Auth0 emulator</title>
<style>{{ style }}</style>
</head>
<body>
<main>
  <h1>Oops!, something went wrong</h1>
  <p class="error" role="alert"><strong>{{ error }}</strong>: {{ description }}</p>
  <p class="hint">This page is served by the local Auth0 emulator, like the error page of an
     Auth0 tenant when the application's request is invalid.</p>
</main>
</body>
</html>
"""


def render_login(
    *,
    action: str,
    signup: bool,
    client_name: str,
    email: str = "",
    name: str = "",
    error: str | None = None,
) -> str:
    """The universal-login page: ``screen_hint=signup`` only changes the wording."""
    return render_template_string(
        _LOGIN,
        style=_STYLE,
        title="Sign up" if signup else "Log in",
        action=action,
        signup=signup,
        client_name=client_name,
        email=email,
        name=name,
        error=error,
    )


def render_error(error: str, description: t.Any) -> str:
    """Auth0's error page, shown when the request cannot be redirected back safely."""
    return render_template_string(_ERROR, style=_STYLE, error=error, description=description)
