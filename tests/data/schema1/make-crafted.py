import json, sys
L_TOP="sha256:67ed875f07785cf4c36d4b3592450df0c46ee7669583e32768f737081521647e"
L_MID="sha256:9601123cab9be1bcd67595be2993e496662a0f56561b6787293e043c008d5ce4"
L_EMPTY="sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
L_BASE="sha256:b634210e4625d09d4f128c24fb5925943df1ec41807d259f563b1490b2d3fb0d"
ids=[c*64 for c in "0123456789abcdef"]
I0,I2,I3,I4,I5=ids[10],ids[2],ids[3],ids[4],ids[5]
top = ('{ "os" : "linux",\n  "architecture":"amd64", "config": {"Hostname":"h","Cmd":["sh","-c","a && b > c"],'
       r'"Env":["X=\u00e9\/"],"Labels":{"z":"1","a":"<2>"},"ExposedPorts":{"80/tcp":{}},"Volumes":null,"StopSignal":"SIGTERM"},'
       r' "container_config":{"Cmd":["/bin/sh","-c","#(nop) ","CMD [\"sh\"]"]},'
       '"created":"2019-03-04T05:06:07.1200Z","docker_version":"18.09.7","author":"A <a@b>","comment":"top",'
       '"Size":1234,"parent_id":"sha256:' + '9'*64 + '","layer_id":"sha256:' + '8'*64 + '",'
       '"custom":{"n":1.50,"e":1E5,"neg":-0,"s":"\u2028 line \u00e9"},"throwaway":false,'
       '"id":"' + I0 + '","parent":"' + I2 + '","Comment":"Upper wins"}')
dup_upper = '{"id":"%s","parent":"%s","created":"2019-03-03T00:00:00Z","container_config":{"Cmd":["dropped upper"]}}' % (I2, I3)
dup_lower = '{"id":"%s","parent":"%s","created":"2019-03-02T00:00:00.000000001Z","container_config":{"Cmd":["kept lower & <kept>"]},"author":"L"}' % (I2, I3)
throw = '{"id":"%s","parent":"%s","created":"2019-03-01T10:00:00+02:00","container_config":{"Cmd":null},"throwaway":true}' % (I3, I4)
dupblob = '{"id":"%s","parent":"%s","created":"2019-02-01T00:00:00-05:30","container_config":{"Cmd":["same blob again"]},"Author":"Upper Case Key"}' % (I4, I5)
base = '{"id":"%s","comment":"base"}' % I5
m = {"schemaVersion":1,"name":"craft/edge","tag":"1","architecture":"amd64",
     "fsLayers":[{"blobSum":b} for b in [L_TOP,L_MID,L_MID,L_EMPTY,L_MID,L_BASE]],
     "history":[{"v1Compatibility":v} for v in [top,dup_upper,dup_lower,throw,dupblob,base]]}
open("edge.json","w").write(json.dumps(m, indent=3))
old = '{"id":"%s","docker_version":"1.6.2","created":"2015-05-01T12:00:00.500Z","config":{"Cmd":"/bin/sh","Env":["PATH=/bin"],"Volumes":{"/v":{}}},"container_config":{"Cmd":["/bin/sh","-c","#(nop) CMD [/bin/sh]"]},"architecture":"amd64","os":"linux","Size":0}' % I5
m2 = {"schemaVersion":1,"name":"craft/old","tag":"1","architecture":"amd64",
      "fsLayers":[{"blobSum":L_BASE}], "history":[{"v1Compatibility":old}]}
open("old-docker.json","w").write(json.dumps(m2, indent=3))
