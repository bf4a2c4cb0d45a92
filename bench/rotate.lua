-- wrk script: every request carries the app cookie of the next session in $TOKENS
-- (one token per line). Each thread starts at its own share of the list (built for
-- wrk -t2: one thread from the first, one from the middle), so together they go
-- through every session once in #tokens requests.
local counter = 0
function setup(thread)
    thread:set("id", counter)
    counter = counter + 1
end

local tokens = {}
local i = 0

function init(args)
    for line in io.lines(os.getenv("TOKENS")) do
        tokens[#tokens + 1] = "portcullis-app=" .. line
    end
    i = (id * math.floor(#tokens / 2)) % #tokens
end

request = function()
    i = i + 1
    if i > #tokens then i = 1 end
    return wrk.format(nil, nil, { ["Cookie"] = tokens[i] })
end
