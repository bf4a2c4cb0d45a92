-- wrk script: every request carries the app cookie of the next session in $TOKENS
-- (one token per line), each thread starting at its own place in the list.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = "portcullis-app=" .. line
end
local i = math.random(#tokens)

request = function()
    i = i + 1
    if i > #tokens then i = 1 end
    return wrk.format(nil, nil, { ["Cookie"] = tokens[i] })
end
