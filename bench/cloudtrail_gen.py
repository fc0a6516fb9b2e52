"""Writes N CloudTrail events as S3 deliveries do: gzip files of
{"Records": [...]}, FILE_EVENTS events each, with the fields and nesting of
real management and data events (sign-ins, S3 object reads, IAM changes,
assumed roles, errors). Deterministic for a seed.

    python3 bench/cloudtrail_gen.py N OUT_DIR [--seed S]
"""
import argparse
import datetime
import gzip
import json
import os
import random
import uuid

FILE_EVENTS = 5_000
ACCOUNT = "111122223333"
REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-2"]
CALLS = [
    ("s3.amazonaws.com", "GetObject", "Data"),
    ("s3.amazonaws.com", "PutObject", "Data"),
    ("s3.amazonaws.com", "DeleteObject", "Data"),
    ("signin.amazonaws.com", "ConsoleLogin", "Management"),
    ("iam.amazonaws.com", "AttachRolePolicy", "Management"),
    ("iam.amazonaws.com", "CreateAccessKey", "Management"),
    ("sts.amazonaws.com", "AssumeRole", "Management"),
    ("ec2.amazonaws.com", "DescribeInstances", "Management"),
    ("kms.amazonaws.com", "Decrypt", "Management"),
]


def event(rng, i, start):
    source, name, category = rng.choice(CALLS)
    user = f"user{rng.randrange(2000):04d}"
    assumed = rng.random() < 0.4
    identity = (
        {
            "type": "AssumedRole",
            "principalId": f"AROAEXAMPLE{rng.randrange(50):02d}:{user}",
            "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/Role{rng.randrange(50)}/{user}",
            "accountId": ACCOUNT,
            "accessKeyId": f"ASIA{rng.randrange(10**12):012d}",
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE", "arn": f"arn:aws:iam::{ACCOUNT}:role/Ops", "accountId": ACCOUNT, "userName": "Ops"},
                "attributes": {"creationDate": start.isoformat() + "Z", "mfaAuthenticated": "false"},
            },
        }
        if assumed
        else {
            "type": "IAMUser",
            "principalId": f"AIDAEXAMPLE{rng.randrange(2000):04d}",
            "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}",
            "accountId": ACCOUNT,
            "accessKeyId": f"AKIA{rng.randrange(10**12):012d}",
            "userName": user,
        }
    )
    when = start + datetime.timedelta(seconds=i * 0.05)
    record = {
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": source,
        "eventName": name,
        "awsRegion": rng.choice(REGIONS),
        "sourceIPAddress": f"198.51.{rng.randrange(256)}.{rng.randrange(256)}",
        "userAgent": rng.choice(["aws-cli/2.15.30 Python/3.11", "Mozilla/5.0 (Macintosh)", "Boto3/1.34.0"]),
        "requestParameters": {"bucketName": f"bucket-{rng.randrange(100)}", "key": f"reports/{rng.randrange(10**6)}.csv"}
        if source == "s3.amazonaws.com"
        else {"roleName": f"Role{rng.randrange(50)}"},
        "responseElements": None,
        "requestID": uuid.UUID(int=rng.getrandbits(128)).hex.upper()[:16],
        "eventID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "readOnly": name.startswith(("Get", "Describe")),
        "eventType": "AwsApiCall",
        "managementEvent": category == "Management",
        "recipientAccountId": ACCOUNT,
        "eventCategory": category,
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": f"{source}"},
    }
    if source == "s3.amazonaws.com":
        record["resources"] = [{"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::bucket-{rng.randrange(100)}/reports/{rng.randrange(10**6)}.csv"}]
    if rng.random() < 0.05:
        record["errorCode"] = "AccessDenied"
        record["errorMessage"] = "User is not authorized to perform this operation"
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = datetime.datetime(2026, 11, 1)
    for first in range(0, args.n, FILE_EVENTS):
        records = [event(rng, i, start) for i in range(first, min(first + FILE_EVENTS, args.n))]
        name = os.path.join(args.out, f"{ACCOUNT}_CloudTrail_us-east-1_{first // FILE_EVENTS:06d}.json.gz")
        with gzip.open(name, "wt", compresslevel=6) as f:
            json.dump({"Records": records}, f)


if __name__ == "__main__":
    main()
