-- wrk script: sign-in POSTs with a wrong password for a name nobody has, so each one
-- costs a full Argon2 verification (the dummy hash that keeps timing even). $CSRF is
-- "cookie-value form-token" from `session_client.py csrf`.
local cookie, token = os.getenv("CSRF"):match("(%S+) (%S+)")
wrk.method = "POST"
wrk.path = "/.portcullis/login"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "portcullis-csrf=" .. cookie
wrk.headers["Origin"] = os.getenv("ORIGIN")
wrk.body = "csrf=" .. token .. "&rd=&username=nobody-here&password=wrong-password-123"
